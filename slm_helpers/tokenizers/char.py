"""Character-level tokenizer: one id per distinct character of the training text."""

from __future__ import annotations

import json
import operator
from pathlib import Path

from ..errors import SLMError


class CharTokenizer:
    """Maps each character of a fixed vocabulary to an id (ids follow sorted character order)."""

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise SLMError("character vocabulary has duplicates; build it with "
                           "CharTokenizer.from_text")
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise SLMError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            shown = ", ".join(repr(ch) for ch in unknown[:10]) + (", ..." if len(unknown) > 10
                                                                  else "")
            raise SLMError(
                f"text contains {len(unknown)} character(s) not in the vocabulary: {shown}; "
                "remove them or build the tokenizer from text that contains them"
            ) from None

    def decode(self, ids) -> str:
        try:
            ids = [operator.index(i) for i in ids]  # ints, or a tensor / NumPy array of them
        except TypeError:
            raise SLMError(f"ids must be integers, got {ids!r:.80}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]  # a negative id must not wrap around
        if bad:
            raise SLMError(f"ids {bad[:10]} are outside the vocabulary (0..{self.vocab_size - 1})")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
