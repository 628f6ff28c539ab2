"""Tokenizers of the course: characters (lesson 1) and byte-level BPE (lesson 7)."""

from .char import CharTokenizer

__all__ = ["CharTokenizer", "tokenizer_from_dict"]


def tokenizer_from_dict(d: dict):
    """Rebuild a tokenizer from its ``to_dict()`` form (as stored inside checkpoints)."""
    kinds = {"char": CharTokenizer}
    if d.get("type") not in kinds:
        from ..errors import SLMError

        raise SLMError(f"unknown tokenizer type {d.get('type')!r}; expected one of {sorted(kinds)}")
    return kinds[d["type"]].from_dict(d)
