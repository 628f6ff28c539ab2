"""Tiny GGUF files for the lesson 12 tests, written with ggml-org's own ``gguf`` writer and
quantizers.

``write_tiny_llama`` writes a random two-layer Llama laid out as llama.cpp's converter lays out
SmolLM2: query and key rows permuted for llama.cpp's rotary layout, a byte-level vocabulary with its
special tokens first, some bytes without a token, merges in order, the "smollm" pre-tokenizer
(digits one by one) and SmolLM2's ChatML template. Its weights come back too, in Hugging Face's
layout (rows unpermuted) and exactly as the file stores them after quantization, so a test can check
a loader without the loader.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize

from slm_helpers.tokenizers import GPT2_SPLIT_PATTERN, bytes_to_unicode, train_merges

# FFN is not 8 * 64 / 3 = 170
N_LAYER, N_EMBD, N_HEAD, N_KV_HEAD, FFN, CONTEXT = 2, 64, 4, 2, 96, 64
HEAD_SIZE = N_EMBD // N_HEAD
ROPE_BASE, RMS_EPS = 50000.0, 1e-5  # not the default base (10000): a loader that drops it fails

# SmolLM2-135M-Instruct's tokenizer.chat_template, as its GGUF file has it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' "
    "}}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]  # ids 0-3, as in SmolLM2
# Bytes with no token, as SmolLM2 has none for 21 bytes:
# a few control characters, and bytes UTF-8 never uses.
MISSING_BYTES = frozenset({0x00, 0x04, 0x7F, 0xC0, 0xC1, *range(0xF5, 0x100)})
N_MERGES = 200

# Every tensor type the course's reader knows, and where the tiny Llama uses it (the rest is Q4_1).
TYPES = {"token_embd.weight": Q.Q8_0, "output.weight": Q.F16, "blk.1.attn_k.weight": Q.Q4_0,
         "blk.1.attn_v.weight": Q.Q8_0, "blk.1.attn_output.weight": Q.BF16,
         "blk.1.ffn_up.weight": Q.F16}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py reordering of a query or key matrix's rows (its
    LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1,
                                                                                  2).reshape(w.shape)


def stored(w: np.ndarray, qtype: Q) -> np.ndarray:
    """The bytes (or floats) the file holds for ``w`` as ``qtype``, made by gguf's own quantizer."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    return quantize(w.astype(np.float32), qtype)


def round_trip(w: np.ndarray, qtype: Q) -> np.ndarray:
    """``w`` as a reader gets it back: quantized, then dequantized by gguf's own code."""
    return dequantize(stored(w, qtype), qtype).reshape(w.shape)


@functools.lru_cache(maxsize=1)
def tiny_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) in SmolLM2's layout: specials, then the byte tokens in GPT-2's
    table order (without MISSING_BYTES), then one token per merge, in merge order. The merges are
    learned with GPT-2's split, so numbers get multi-digit tokens that only a digits-first
    pre-tokenizer avoids."""
    text = Path(__file__).resolve().parents[1].joinpath("data",
                                                        "tinyshakespeare.txt").read_text(encoding="utf-8")
    text = (text[:6000] + " 2024-01-01 1234567890 3.14159 1,000,000 12 123 99 " * 8
            + " café naïve 日本語 😀 " * 4)
    table = bytes_to_unicode()
    # GPT-2's order: '!' first
    byte_values = sorted(set(range(256)) - MISSING_BYTES, key=lambda b: table[b])
    assert not MISSING_BYTES & set(text.encode("utf-8"))
    # the trainer's ids: 0-255 the bytes, 256 + k merge k
    pieces = {b: table[b] for b in range(256)}
    merges = []
    for k, (a, b) in enumerate(train_merges(text, N_MERGES, GPT2_SPLIT_PATTERN)):
        pieces[256 + k] = pieces[a] + pieces[b]
        merges.append(f"{pieces[a]} {pieces[b]}")
    tokens = SPECIALS + [table[b] for b in byte_values] + [pieces[256 + k] for k in range(N_MERGES)]
    assert len(set(tokens)) == len(tokens), ("two merges make the same token: pick other training "
                                             "text")
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3: control, 1: normal
    return tokens, types, merges


@dataclass
class TinyLlama:
    path: Path
    weights: dict[str, torch.Tensor]  # Hugging Face names and layout, the values the file stores
    tokens: list[str]


def _metadata(arch: str, tokens, types, merges) -> dict[str, tuple[str, object]]:
    """key -> (GGUFWriter method, value), what llama.cpp's converter writes for a Llama."""
    return {
        "general.name": ("add_string", "tiny random llama"),
        f"{arch}.context_length": ("add_uint32", CONTEXT),
        f"{arch}.embedding_length": ("add_uint32", N_EMBD),
        f"{arch}.block_count": ("add_uint32", N_LAYER),
        f"{arch}.feed_forward_length": ("add_uint32", FFN),
        f"{arch}.attention.head_count": ("add_uint32", N_HEAD),
        f"{arch}.attention.head_count_kv": ("add_uint32", N_KV_HEAD),
        f"{arch}.rope.freq_base": ("add_float32", ROPE_BASE),
        f"{arch}.attention.layer_norm_rms_epsilon": ("add_float32", RMS_EPS),
        f"{arch}.vocab_size": ("add_uint32", len(tokens)),
        f"{arch}.rope.dimension_count": ("add_uint32", HEAD_SIZE),
        "tokenizer.ggml.model": ("add_string", "gpt2"),
        "tokenizer.ggml.pre": ("add_string", "smollm"),
        "tokenizer.ggml.tokens": ("add_array", tokens),
        "tokenizer.ggml.token_type": ("add_array", types),
        "tokenizer.ggml.merges": ("add_array", merges),
        "tokenizer.ggml.bos_token_id": ("add_uint32", 1),
        "tokenizer.ggml.eos_token_id": ("add_uint32", 2),
        "tokenizer.ggml.unknown_token_id": ("add_uint32", 0),
        "tokenizer.ggml.padding_token_id": ("add_uint32", 2),
        "tokenizer.ggml.add_bos_token": ("add_bool", False),
        "tokenizer.chat_template": ("add_string", SMOLLM2_CHAT_TEMPLATE),
        # One key of every other value type, for the reader's tests.
        "test.uint8": ("add_uint8", 200), "test.int8": ("add_int8", -100),
        "test.uint16": ("add_uint16", 60000),
        "test.int16": ("add_int16", -30000), "test.int32": ("add_int32", -2_000_000_000),
        "test.uint64": ("add_uint64", 2**63 + 5), "test.int64": ("add_int64", -(2**62)),
        "test.float64": ("add_float64", 0.1), "test.float32s": ("add_array", [0.5, -1.25, 3.0]),
        "test.unicode": ("add_string", "naïve 日本語 😀"),
    }


def write_tiny_llama(path: str | Path, *, tied: bool = True, arch: str = "llama", seed: int = 0,
                     metadata: dict | None = None, types: dict | None = None, skip=(),
                     extra=None) -> TinyLlama:
    """Write a random tiny Llama GGUF file at ``path``.

    ``metadata``: key -> (writer method, value) to add or replace, or key -> None to leave a key
    out; ``types``: tensor name -> type, over TYPES; ``skip``: tensor names to leave out; ``extra``:
    name -> (array, type) of tensors to add (a uint8 array is written as raw bytes of that type)."""
    tokens, token_types, merges = tiny_vocabulary()
    rng = np.random.default_rng(seed)
    hf = {"model.embed_tokens.weight": 0.5 * rng.standard_normal((len(tokens), N_EMBD)),
          "model.norm.weight": 1 + 0.2 * rng.standard_normal(N_EMBD)}
    gguf = {"token_embd.weight": "model.embed_tokens.weight",
            "output_norm.weight": "model.norm.weight"}
    if not tied:
        hf["lm_head.weight"] = 0.5 * rng.standard_normal((len(tokens), N_EMBD))
        gguf["output.weight"] = "lm_head.weight"
    kv = N_KV_HEAD * HEAD_SIZE
    parts = {"attn_q": ("self_attn.q_proj", N_EMBD, N_EMBD),
             "attn_k": ("self_attn.k_proj", kv, N_EMBD),
             "attn_v": ("self_attn.v_proj", kv, N_EMBD),
             "attn_output": ("self_attn.o_proj", N_EMBD, N_EMBD),
             "ffn_gate": ("mlp.gate_proj", FFN, N_EMBD),
             "ffn_up": ("mlp.up_proj", FFN, N_EMBD), "ffn_down": ("mlp.down_proj", N_EMBD, FFN)}
    for i in range(N_LAYER):
        for norm, hf_norm in (("attn_norm", "input_layernorm"),
                              ("ffn_norm", "post_attention_layernorm")):
            hf[f"model.layers.{i}.{hf_norm}.weight"] = 1 + 0.2 * rng.standard_normal(N_EMBD)
            gguf[f"blk.{i}.{norm}.weight"] = f"model.layers.{i}.{hf_norm}.weight"
        for part, (hf_part, rows, cols) in parts.items():
            hf[f"model.layers.{i}.{hf_part}.weight"] = 0.15 * rng.standard_normal((rows, cols))
            gguf[f"blk.{i}.{part}.weight"] = f"model.layers.{i}.{hf_part}.weight"

    types = {**TYPES, **(types or {})}
    writer = GGUFWriter(str(path), arch)
    meta = {**_metadata(arch, tokens, token_types, merges), **(metadata or {})}
    for key, entry in meta.items():
        if entry is not None:
            method, value = entry
            getattr(writer, method)(key, value)
    weights = {}
    for name, hf_name in gguf.items():
        if name in skip:
            continue
        w = hf[hf_name]
        qtype = types.get(name, Q.F32 if w.ndim == 1 else Q.Q4_1)
        if ".attn_q." in name or ".attn_k." in name:
            w = permute(w, N_HEAD if ".attn_q." in name else N_KV_HEAD)
        data = stored(w, qtype)
        writer.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
        back = round_trip(w, qtype)
        # llama.cpp's permutation undone, by inverting its reshapes
        if ".attn_q." in name or ".attn_k." in name:
            heads = N_HEAD if ".attn_q." in name else N_KV_HEAD
            back = back.reshape(heads, back.shape[0] // heads // 2, 2, -1).swapaxes(1,
                                                                                    2).reshape(back.shape)
        weights[hf_name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    for name, (data, qtype) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyLlama(Path(path), weights, tokens)


def llama_logits(weights: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """A Llama's logits written out from Hugging Face's formulas (RMSNorm, rotate_half RoPE,
    grouped-query attention, SwiGLU), on the tiny model's weights: a reference that needs neither
    the course's GPT nor transformers."""
    w = weights
    T = idx.size(1)

    def rms(x, gain):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * gain

    def rotate(x):  # (B, heads, T, hs): HF's rotate_half, the halves of a head paired
        inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, HEAD_SIZE, 2).float() / HEAD_SIZE)
        angles = torch.arange(T).float()[:, None] * inv_freq
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        x1, x2 = x[..., :HEAD_SIZE // 2], x[..., HEAD_SIZE // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][idx]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q, k, v = (
            (h @ w[p + f"self_attn.{n}_proj.weight"].T).view(*idx.shape, -1, HEAD_SIZE).transpose(1,
                                                                                                  2)
            for n in "qkv")
        q, k = rotate(q), rotate(k)
        k, v = (t.repeat_interleave(N_HEAD // N_KV_HEAD, dim=1) for t in (k, v))
        scores = (q @ k.transpose(-1, -2) / HEAD_SIZE ** 0.5).masked_fill(~mask, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(*idx.shape, N_EMBD)
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return rms(x, w["model.norm.weight"]) @ head.T


def set_tensor_type(path, name: str, type_id: int) -> None:
    """Rewrite the type of tensor ``name`` in the tensor table of the file at ``path``."""
    data = bytearray(path.read_bytes())
    at = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
