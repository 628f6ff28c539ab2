"""Tokenizers of the course: characters (lesson 1) and byte-level BPE (lesson 7)."""

from .bpe import (
    DIGITS_SPLIT_PATTERN,
    ENDOFTEXT,
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    render_token,
    train_merges,
    train_merges_naive,
)
from .char import CharTokenizer
from .gpt2 import byte_level_tokenizer, bytes_to_unicode, gpt2_encoding, gpt2_tokenizer

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "DIGITS_SPLIT_PATTERN",
    "ENDOFTEXT",
    "GPT2_SPLIT_PATTERN",
    "byte_level_tokenizer",
    "bytes_to_unicode",
    "gpt2_encoding",
    "gpt2_tokenizer",
    "render_token",
    "tokenizer_from_dict",
    "train_merges",
    "train_merges_naive",
]


def tokenizer_from_dict(d: dict):
    """Rebuild a tokenizer from its ``to_dict()`` form (as stored inside checkpoints)."""
    kinds = {"char": CharTokenizer, "bpe": BPETokenizer}
    if not isinstance(d, dict) or d.get("type") not in kinds:
        from ..errors import SLMError

        kind = d.get("type") if isinstance(d, dict) else None
        raise SLMError(f"unknown tokenizer type {kind!r}; expected one of {sorted(kinds)}")
    return kinds[d["type"]].from_dict(d)
