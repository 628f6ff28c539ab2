"""CharTokenizer: round trips, id order, clear errors, persistence."""

from pathlib import Path

import numpy as np
import pytest
import torch

from slm_helpers.errors import SLMError
from slm_helpers.tokenizers import CharTokenizer, tokenizer_from_dict

SHAKESPEARE = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"


def test_round_trip_on_all_of_shakespeare():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text)) == 65  # Tiny Shakespeare's well-known 65 characters
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_ids_follow_sorted_character_order():
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == ["e", "h", "l", "o"]
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    tok = CharTokenizer.from_text("b a\n")  # "\n" (10) < " " (32) < "a" < "b"
    assert tok.encode("\n ab") == [0, 1, 2, 3]


def test_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(SLMError, match=r"2 character\(s\) not in the vocabulary: 'X', 'Y'"):
        tok.encode("abXcYX")
    with pytest.raises(SLMError, match=r"12 character.*, \.\.\.;"):  # long lists are cut after 10
        tok.encode("ABCDEFGHIJKL")


def test_decode_out_of_range_ids():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(SLMError, match=r"\[3\].*0\.\.2"):
        tok.decode([0, 3])
    with pytest.raises(SLMError, match=r"\[-1\]"):  # must not wrap around to the last character
        tok.decode([-1])
    with pytest.raises(SLMError, match="integers"):
        tok.decode([0.5])


def test_decode_accepts_tensors_and_arrays():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(torch.tensor([2, 0, 1])) == "cab"
    assert tok.decode(np.array([1, 1])) == "bb"


def test_save_load_and_dict_round_trip(tmp_path):
    text = "héllo → wörld\n\t\"quoted\" 'single' 日本"
    tok = CharTokenizer.from_text(text)
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tok.chars and loaded.encode(text) == tok.encode(text)
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    assert tok.to_dict() == {"type": "char", "chars": sorted(set(text))}


def test_bad_vocabularies():
    with pytest.raises(SLMError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(SLMError, match="duplicates"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(SLMError, match="unknown tokenizer type 'nope'"):
        tokenizer_from_dict({"type": "nope"})
