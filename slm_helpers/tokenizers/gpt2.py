"""GPT-2's tokenizer from the files shipped in ``data/gpt2/``, both as ours and as tiktoken's,
offline.

GPT-2 released two files: ``vocab.bpe`` (the 50,000 merges, in the order they were learned) and
``encoder.json`` (token string -> id). Both write bytes through a table, :func:`bytes_to_unicode`,
that maps each byte to a printable character (space -> 'Ġ', newline -> 'Ċ'), so the files are text.
"""

from __future__ import annotations

import functools
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from ..data import DATA_FILES, data_path
from ..errors import SLMError
from .bpe import ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer


def _gpt2_file(name: str) -> Path:
    """Path of GPT-2's tokenizer file ``name`` (shipped, or downloaded once), checked against its
    published hash."""
    remote = DATA_FILES[f"gpt2/{name}"]
    path = data_path(f"gpt2/{name}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != remote.sha256:
        raise SLMError(f"{path} differs from GPT-2's published file (sha256 mismatch); "
                       "restore it with: git checkout data/gpt2")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the other 68 bytes
    (space, control characters, ...) get the characters from chr(256) on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def byte_level_tokenizer(tokens: list[str], merges: list[str], special_tokens: dict[str, int],
                         pattern: str = GPT2_SPLIT_PATTERN) -> BPETokenizer:
    """Our :class:`BPETokenizer` from a released vocabulary written through
    :func:`bytes_to_unicode`.

    ``tokens[i]`` is the text of id i (a special token's id holds its own text), ``merges`` are
    "left right" strings in the order they were learned, and ``special_tokens`` maps text -> id.
    Such a vocabulary fits a ``BPETokenizer`` when its one-byte tokens sit at consecutive ids and
    merge k makes the id right after them plus k; anything else is refused with the reason.
    """
    byte_decoder = {ch: b for b, ch in bytes_to_unicode().items()}

    def to_bytes(text: str) -> bytes:
        try:
            return bytes(byte_decoder[ch] for ch in text)
        except KeyError:
            raise SLMError(f"token {text!r} is not written through GPT-2's byte table; "
                           "this is not a byte-level BPE vocabulary") from None

    specials = set(special_tokens.values())
    ordinary = [i for i in range(len(tokens)) if i not in specials]
    byte_ids = [i for i in ordinary if len(tokens[i]) == 1]
    first_id = byte_ids[0] if byte_ids else 0
    if byte_ids != list(range(first_id, first_id + len(byte_ids))):
        raise SLMError("the one-byte tokens of this vocabulary are not at consecutive ids, "
                       "which a BPETokenizer needs")
    # text -> id (the table maps bytes to text one to one)
    token_id = {tokens[i]: i for i in ordinary}
    pairs = []
    for k, merge in enumerate(merges):
        left, right = merge.split(" ")
        made, expected = token_id.get(left + right), first_id + len(byte_ids) + k
        if made != expected or left not in token_id or right not in token_id:
            raise SLMError(f"merge {k} ({merge!r}) makes id {made}, but a BPETokenizer numbers "
                           f"merge k {first_id + len(byte_ids)} + k = {expected}: this vocabulary "
                           "is not in merge order")
        pairs.append((token_id[left], token_id[right]))
    if len(ordinary) != len(byte_ids) + len(merges):
        raise SLMError(f"the vocabulary has {len(ordinary)} ordinary tokens but {len(byte_ids)} "
                       f"bytes and {len(merges)} merges make {len(byte_ids) + len(merges)}")
    return BPETokenizer(pairs, special_tokens, pattern, [to_bytes(tokens[i])[0] for i in byte_ids],
                        first_id)


def gpt2_tokenizer() -> BPETokenizer:
    """Our :class:`BPETokenizer` loaded with GPT-2's 50,000 merges; same ids as GPT-2 (50,257 in
    all).

    GPT-2's ids 0..255 are its byte tokens in the order of the printable table (id 0 is '!'), so the
    tokenizer carries that ``byte_order``; ``encoder.json`` must agree with the ids the merges
    imply."""
    encoder = json.loads(_gpt2_file("encoder.json").read_text(encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.get)
    if [encoder[t] for t in tokens] != list(range(len(tokens))):
        raise SLMError("data/gpt2/encoder.json does not number its tokens 0, 1, 2, ...; "
                       "restore it with: git checkout data/gpt2")
    lines = _gpt2_file("vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    try:
        return byte_level_tokenizer(tokens, merges, {ENDOFTEXT: 50256})
    except SLMError:
        raise SLMError("data/gpt2/encoder.json does not match data/gpt2/vocab.bpe; "
                       "restore both with: git checkout data/gpt2") from None


@contextmanager
def _tiktoken_reads_local_files():
    """tiktoken's loader reads each file through ``read_file_cached``, which copies it into a cache
    directory and, in tiktoken 0.8 and 0.9, opens a local path only with the optional blobfile
    package. The shipped files are local and their hashes checked: while the loader runs, it reads
    them straight from disk."""
    import tiktoken.load

    cached = tiktoken.load.read_file_cached
    tiktoken.load.read_file_cached = lambda path, expected_hash=None: Path(path).read_bytes()
    try:
        yield
    finally:
        tiktoken.load.read_file_cached = cached


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's GPT-2 encoding (what ``tiktoken.get_encoding("gpt2")`` gives), built from the
    shipped files with tiktoken's own loader, so it needs no network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # hashes checked here
    vocab_bpe, encoder_json = _gpt2_file("vocab.bpe"), _gpt2_file("encoder.json")
    with _tiktoken_reads_local_files():
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe),
                                                encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)
