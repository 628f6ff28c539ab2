"""GPT-2's tokenizer from the files shipped in ``data/gpt2/``, both as ours and as tiktoken's, offline.

GPT-2 released two files: ``vocab.bpe`` (the 50,000 merges, in the order they were learned) and
``encoder.json`` (token string -> id). Both write bytes through a table, :func:`bytes_to_unicode`,
that maps each byte to a printable character (space -> 'Ġ', newline -> 'Ċ'), so the files are text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..data import DATA_FILES, data_path
from ..errors import SLMError
from .bpe import ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer


def _gpt2_file(name: str) -> Path:
    """Path of GPT-2's tokenizer file ``name`` (shipped, or downloaded once), checked against its published hash."""
    remote = DATA_FILES[f"gpt2/{name}"]
    path = data_path(f"gpt2/{name}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != remote.sha256:
        raise SLMError(f"{path} differs from GPT-2's published file (sha256 mismatch); "
                       "restore it with: git checkout data/gpt2")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the other 68 bytes
    (space, control characters, ...) get the characters from chr(256) on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def gpt2_tokenizer() -> BPETokenizer:
    """Our :class:`BPETokenizer` loaded with GPT-2's 50,000 merges; same ids as GPT-2 (50,257 in all)."""
    byte_encoder = bytes_to_unicode()
    byte_decoder = {ch: b for b, ch in byte_encoder.items()}
    byte_order = list(byte_encoder)  # GPT-2's ids 0..255: the printable bytes first, then the rest (id 0 is '!')
    token_id = {bytes([b]): i for i, b in enumerate(byte_order)}  # bytes -> id, grown merge by merge
    merges = []
    lines = _gpt2_file("vocab.bpe").read_text(encoding="utf-8").split("\n")
    for line in lines[1:]:  # line 0 is "#version: 0.2"
        if not line:
            continue
        left, right = (bytes(byte_decoder[ch] for ch in part) for part in line.split(" "))
        merges.append((token_id[left], token_id[right]))
        token_id[left + right] = 256 + len(merges) - 1
    # encoder.json must agree with the ids the merges imply (GPT-2's id = 256 + merge rank)
    encoder = json.loads(_gpt2_file("encoder.json").read_text(encoding="utf-8"))
    implied = {"".join(byte_encoder[b] for b in token): i for token, i in token_id.items()}
    implied[ENDOFTEXT] = 50256
    if implied != encoder:
        raise SLMError("data/gpt2/encoder.json does not match data/gpt2/vocab.bpe; "
                       "restore both with: git checkout data/gpt2")
    return BPETokenizer(merges, {ENDOFTEXT: 50256}, GPT2_SPLIT_PATTERN, byte_order)


@contextmanager
def _tiktoken_cache_off():
    """tiktoken copies every file it reads into a cache directory; TIKTOKEN_CACHE_DIR='' turns that off."""
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's GPT-2 encoding (what ``tiktoken.get_encoding("gpt2")`` gives), built from the
    shipped files with tiktoken's own loader, so it needs no network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = _gpt2_file("vocab.bpe"), _gpt2_file("encoder.json")  # hashes checked here
    with _tiktoken_cache_off():
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)
