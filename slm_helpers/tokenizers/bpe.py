"""Byte-level BPE (byte pair encoding), the tokenizer family of GPT-2, in the style of minbpe.

The idea in four lines:
  1. Text becomes UTF-8 bytes, so 256 base tokens cover every string (no "unknown" token).
  2. A regex first cuts text into chunks (words, numbers, punctuation, whitespace) and merges
     never cross chunk boundaries, so "dog." and "dog!" share the token "dog".
  3. Training repeats: find the most frequent adjacent pair of tokens, give it a new id.
  4. Encoding replays those merges, earliest-learned first; decoding concatenates bytes.

Ids: 0..255 are the base tokens (one byte each), then one id per merge in the order they were
learned (merge k creates id 256 + k), then the special tokens. GPT-2 numbers its base bytes in
another order, so a tokenizer carries ``byte_order`` (id -> byte value) for the first 256 ids.
# New (lesson 12): released tokenizers bend these rules a little. SmolLM2 puts its 17 special tokens
first (ids 0-16) and has a token for only 235 of the 256 bytes (ids 17-251); ``first_id`` says
where the byte tokens start, ``byte_order`` may leave bytes out (such a byte is dropped when
encoding, as Hugging Face's tokenizers drop it), and merge k then creates id
``first_id + len(byte_order) + k``.
"""

from __future__ import annotations

import heapq
import json
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import regex  # not `re`: the split pattern needs \p{L} (any letter) and possessive quantifiers

from ..errors import SLMError

# GPT-2's pre-split, written as tiktoken writes it. GPT-2's original release used
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# which cuts text identically; the possessive ++ only make the regex engine faster.
# Pieces: English contractions ('s 'll ...), a word with its leading space, a number, a run of
# punctuation, then whitespace: a run of spaces keeps its last space for the word that follows.
GPT2_SPLIT_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                      r"""|\s++$|\s+(?!\S)|\s""")
# New (lesson 12): SmolLM2 (and Llama 3, Qwen, ...) cut every digit off on its own before GPT-2's
# split, so numbers are read digit by digit. Hugging Face runs two pre-tokenizers in a row (Digits,
# then GPT-2's regex on each piece); one regex does the same: a digit is a chunk of its own, and a
# run of whitespace just before a digit ends there, as it would at the end of a piece.
DIGITS_SPLIT_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\p{N}"""
                        r"""|\s++(?=\p{N})|\s++$|\s+(?!\S)|\s""")
ENDOFTEXT = "<|endoftext|>"

_CACHE_LIMIT = 200_000  # chunks remembered by encode; the dict is emptied when it grows past this


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _special_regex(specials) -> regex.Pattern | None:
    """A regex matching any of the special-token strings (longest first, so none hides another)."""
    if not specials:
        return None
    return regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))


def _pre_split(text: str, pattern: str, special_tokens=()) -> list[str]:
    """Cut training text into chunks; special-token strings are dropped so no merge spans them."""
    if not isinstance(text, str):
        raise SLMError(f"training text must be a str, got {type(text).__name__}; read the file "
                       "with .read_text()")
    split = regex.compile(pattern)
    special = _special_regex(special_tokens)
    parts = special.split(text) if special else [text]
    return [chunk for part in parts for chunk in split.findall(part)]


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (left to right, no overlaps) by
    ``new_id``."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _check_num_merges(num_merges) -> None:
    if not isinstance(num_merges, int) or num_merges < 0:
        raise SLMError(f"num_merges must be a non-negative int, got {num_merges!r}")


def _too_few_pairs(k: int, num_merges: int) -> SLMError:
    return SLMError(
        f"the training text only allows {k} merges but {num_merges} were asked for; "
        "train on more text or ask for a smaller vocab_size"
    )


def train_merges(text: str, num_merges: int, pattern: str = GPT2_SPLIT_PATTERN,
                 special_tokens=()) -> list:
    """Learn ``num_merges`` merges from ``text``; merge k (0-based) creates token id 256 + k.

    Tie-break rule (shared with :func:`train_merges_naive`): the most frequent pair wins; among
    equally frequent pairs, the smallest pair of ids, ``min((a, b))``, wins.

    Why it is fast:
      * A text has far fewer distinct chunks than chunks ("the" occurs thousands of times), so we
        keep each distinct chunk once, with its count, and weight its pairs by that count.
      * After a merge only the chunks that contained the merged pair change, and only their
        pairs' counts move. An index pair -> chunks finds those chunks, and we update the counts
        of just those, instead of recounting the whole text after every merge.
      * A heap hands out the most frequent pair; entries whose count has since changed are stale
        and skipped when popped (a fresh entry was pushed when the count changed).
    """
    _check_num_merges(num_merges)
    chunk_counts = Counter(_pre_split(text, pattern, special_tokens))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk once
    freqs = list(chunk_counts.values())  # ... and how often it occurs

    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> occurrences in the whole text
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks that (may) hold it
    for i, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += freq
            where[pair].add(i)
    # min-heap: highest count, then smallest pair
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)

    merges = []
    for k in range(num_merges):
        while heap:
            neg_count, pair = heapq.heappop(heap)
            if counts.get(pair) == -neg_count:  # still up to date?
                break
        else:
            raise _too_few_pairs(k, num_merges)
        new_id = 256 + k
        merges.append(pair)
        changed = set()
        for i in where.pop(pair):
            word = words[i]
            new_word = _merge(word, pair, new_id)
            if len(new_word) == len(word):  # stale index entry: the pair left this chunk earlier
                continue
            freq = freqs[i]
            # take the chunk's old pairs out of the counts and put its new pairs in
            for p in zip(word, word[1:]):
                counts[p] -= freq
                changed.add(p)
            for p in zip(new_word, new_word[1:]):
                counts[p] += freq
                where[p].add(i)
                changed.add(p)
            words[i] = new_word
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
    return merges


def train_merges_naive(text: str, num_merges: int, pattern: str = GPT2_SPLIT_PATTERN,
                       special_tokens=()) -> list:
    """Reference trainer: recount every pair of every chunk after each merge (slow, obviously
    right).

    Same tie-break rule as :func:`train_merges`, so both return the very same merges; tests and
    the benchmark use it to check the fast trainer.
    """
    _check_num_merges(num_merges)
    words = [list(chunk.encode("utf-8")) for chunk in _pre_split(text, pattern, special_tokens)]
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for word in words:
            counts.update(zip(word, word[1:]))
        if not counts:
            raise _too_few_pairs(k, num_merges)
        pair = min(counts, key=lambda p: (-counts[p], p))
        words = [_merge(word, pair, 256 + k) for word in words]
        merges.append(pair)
    return merges


# ---------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------


def render_token(token: bytes) -> str:
    """A token's bytes as readable text: invalid UTF-8 becomes U+FFFD, control characters are
    escaped."""
    text = token.decode("utf-8", errors="replace")
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch)[0] == "C" else ch for ch in text)


class BPETokenizer:
    """Byte-level BPE tokenizer: ``merges``, a split ``pattern`` and ``special_tokens``.

    Build one with :meth:`train` (your own text), :func:`gpt2_tokenizer` (GPT-2's merges) or
    :func:`byte_level_tokenizer` (a released vocabulary and merge list, such as a GGUF file's).
    ``encode``/``decode`` follow tiktoken's rules for special tokens.
    """

    def __init__(self, merges, special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_SPLIT_PATTERN, byte_order=None, first_id: int = 0):
        self.byte_order = list(range(256)) if byte_order is None else [int(b) for b in byte_order]
        if (not set(self.byte_order) <= set(range(256))
                or len(set(self.byte_order)) != len(self.byte_order)):
            raise SLMError("byte_order must list byte values 0..255, each at most once")
        if not (isinstance(first_id, int) and first_id >= 0):
            raise SLMError("first_id must be a non-negative int (the id of the first byte token), "
                           f"got {first_id!r}")
        self.first_id = first_id
        # id -> bytes, growing as each merge glues two earlier
        # tokens together (None: a special token's id)
        vocab: list[bytes | None] = [None] * first_id + [bytes([b]) for b in self.byte_order]
        # (id, id) -> new id; a lower id = an earlier merge
        self.merges: dict[tuple[int, int], int] = {}
        for a, b in merges:
            new_id = len(vocab)
            if not (isinstance(a, int) and isinstance(b, int) and first_id <= a < new_id
                    and first_id <= b < new_id):
                raise SLMError(f"merge {new_id - len(self.byte_order) - first_id} ({a!r}, {b!r}) "
                               f"uses ids that do not exist yet ({first_id}..{new_id - 1}); merges "
                               "must be listed in the order they were learned")
            if (a, b) in self.merges:
                raise SLMError(f"merge ({a}, {b}) is listed twice; each pair can be merged only "
                               "once")
            self.merges[(a, b)] = new_id
            vocab.append(vocab[a] + vocab[b])
        self.special_tokens = dict(special_tokens or {})  # str -> id
        for s, i in self.special_tokens.items():
            if not isinstance(i, int) or not s or i < 0 or first_id <= i < len(vocab):
                raise SLMError(f"special token {s!r} has id {i!r}; special ids must lie outside "
                               f"the byte and merge ids ({first_id}..{len(vocab) - 1})")
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise SLMError("two special tokens share one id; give each its own id")
        self.pattern = pattern
        self._split = regex.compile(pattern)
        size = max([len(vocab) - 1, *self.special_tokens.values()]) + 1
        self._vocab: list[bytes | None] = vocab + [None] * (size - len(vocab))  # None: unused id
        for s, i in self.special_tokens.items():
            self._vocab[i] = s.encode("utf-8")
        self._byte_to_id = [-1] * 256  # -1: this byte has no token and is dropped
        for i, b in enumerate(self.byte_order):
            self._byte_to_id[b] = first_id + i
        self._cache: dict[str, list[int]] = {}
        # New (lesson 12): a released model's chat format (Jinja), if any
        self.chat_template: str | None = None

    # ----- building -----

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(ENDOFTEXT,),
              pattern: str = GPT2_SPLIT_PATTERN) -> BPETokenizer:
        """Learn a tokenizer with exactly ``vocab_size`` ids: 256 bytes + merges + special
        tokens."""
        special_tokens = list(dict.fromkeys(special_tokens))
        if not all(isinstance(s, str) and s for s in special_tokens):
            raise SLMError(f"special tokens must be non-empty strings, got {special_tokens!r}")
        floor = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < floor:
            raise SLMError(
                f"vocab_size must be an int >= {floor} (256 byte tokens + {len(special_tokens)} "
                f"special), got {vocab_size!r}; pick a larger vocab_size"
            )
        if not isinstance(text, str) or not text:
            raise SLMError("cannot train a BPE tokenizer on empty text; pass the training text as "
                           "a str")
        num_merges = vocab_size - floor
        merges = train_merges(text, num_merges, pattern, special_tokens)
        specials = {s: 256 + num_merges + k for k, s in enumerate(special_tokens)}
        return cls(merges, specials, pattern)

    # ----- sizes and views -----

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> the bytes that id stands for (special tokens included)."""
        return {i: b for i, b in enumerate(self._vocab) if b is not None}

    # ----- encoding -----

    def _encode_chunk(self, chunk: str) -> list[int]:
        """Bytes of one chunk -> ids, applying merges earliest-learned (lowest id) first."""
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        ids = [i for i in (self._byte_to_id[b] for b in chunk.encode("utf-8")) if i >= 0]
        merges = self.merges
        while len(ids) >= 2:
            # of the adjacent pairs that have a merge, take the one learned first
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, 1 << 62))
            new_id = merges.get(pair)
            if new_id is None:
                break
            ids = _merge(ids, pair, new_id)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as plain text (like tiktoken's)."""
        if not isinstance(text, str):
            raise SLMError(f"encode expects a str, got {type(text).__name__}")
        out: list[int] = []
        for chunk in self._split.findall(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        """Encode ``text``; special tokens follow tiktoken's rules.

        ``allowed_special``: special-token strings (or "all") encoded as their single id.
        ``disallowed_special``: strings (default "all" = every special not allowed) whose presence
        in ``text`` is an error, because a user-typed "<|endoftext|>" silently ending a document is
        a classic bug. Pass ``disallowed_special=()`` to encode them as ordinary text instead.
        """
        if not isinstance(text, str):
            raise SLMError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        specials = set(self.special_tokens)
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        unknown = (allowed | disallowed) - specials
        if unknown:
            raise SLMError(f"{sorted(unknown)} are not special tokens of this tokenizer "
                           f"(it has {sorted(specials)}); check the spelling")
        if disallowed:
            found = _special_regex(disallowed).search(text)
            if found:
                raise SLMError(
                    f"text contains the special token {found.group()!r}, which is not allowed; "
                    f"pass allowed_special={{{found.group()!r}}} (or 'all') to encode it as one "
                    "token, or disallowed_special=() to encode it as ordinary text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in _special_regex(allowed).finditer(text):
            out.extend(self.encode_ordinary(text[start:m.start()]))
            out.append(self.special_tokens[m.group()])
            start = m.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    # ----- decoding -----

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of ``ids`` (a token may hold part of a multi-byte character)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # torch tensors, numpy arrays
        ids = [ids] if isinstance(ids, int) else list(ids)
        try:
            if ids and min(ids) < 0:  # a negative index would silently count from the end
                raise IndexError
            return b"".join(self._vocab[i] for i in ids)
        except (IndexError, TypeError):
            bad = [i for i in ids
                   if not (isinstance(i, int) and 0 <= i < self.vocab_size
                           and self._vocab[i] is not None)]
            raise SLMError(f"ids {bad[:10]} are not in the vocabulary "
                           f"(0..{self.vocab_size - 1})") from None

    def decode(self, ids) -> str:
        """Ids back to text; byte sequences that are not valid UTF-8 become U+FFFD (as in
        tiktoken)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ----- export, persistence -----

    def to_tiktoken(self, name: str = "slm_bpe"):
        """The same tokenizer as a ``tiktoken.Encoding`` (Rust, much faster), giving the same
        ids."""
        import tiktoken

        if len(self.byte_order) != 256:
            raise SLMError("tiktoken needs a token for each of the 256 bytes and this tokenizer "
                           f"has {len(self.byte_order)}; use this tokenizer's own encode")
        # special tokens go separately
        ordinary = range(self.first_id, self.first_id + 256 + len(self.merges))
        ranks = {self._vocab[i]: i for i in ordinary}
        if len(ranks) != len(ordinary):
            raise SLMError("two merges produce the same bytes, which tiktoken cannot represent; "
                           "use this tokenizer's own encode")
        return tiktoken.Encoding(name=name, pat_str=self.pattern, mergeable_ranks=ranks,
                                 special_tokens=dict(self.special_tokens))

    def to_dict(self) -> dict:
        d = {"type": "bpe", "pattern": self.pattern, "merges": [list(p) for p in self.merges],
             "special_tokens": dict(self.special_tokens)}
        if self.byte_order != list(range(256)):
            d["byte_order"] = list(self.byte_order)
        if self.first_id:
            d["first_id"] = self.first_id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        if not isinstance(d, dict) or d.get("type") != "bpe" or "merges" not in d:
            raise SLMError("not a saved BPE tokenizer (expected a dict with type 'bpe' and "
                           "'merges')")
        try:
            merges = [(a, b) for a, b in d["merges"]]
        except (TypeError, ValueError):
            raise SLMError("a saved BPE tokenizer's 'merges' must be a list of [id, id] pairs; "
                           "save the tokenizer again") from None
        return cls(merges, d.get("special_tokens"), d.get("pattern", GPT2_SPLIT_PATTERN),
                   d.get("byte_order"),
                   d.get("first_id", 0))

    def save(self, path: str | Path) -> None:
        """Write readable JSON: one merge per line, then every token's text (the latter for reading
        only)."""
        d = self.to_dict()
        lines = ["{"]
        for key in ("type", "pattern", "byte_order", "first_id", "special_tokens"):
            if key in d:
                lines.append(f"  {json.dumps(key)}: {json.dumps(d[key], ensure_ascii=False)},")
        merges = [f"    [{a}, {b}]" for a, b in d["merges"]]
        lines.append('  "merges": [' + ("\n" + ",\n".join(merges) + "\n  " if merges
                                        else "") + "],")
        vocab = [f'    "{i}": {json.dumps(render_token(b), ensure_ascii=False)}' for i,
                 b in self.vocab.items()]
        lines.append('  "vocab": {\n' + ",\n".join(vocab) + "\n  }")
        lines.append("}")
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise SLMError(f"tokenizer file not found: {path}; save one first with "
                           "tokenizer.save(path)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SLMError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); save the "
                           "tokenizer again") from None
        return cls.from_dict(d)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={sorted(self.special_tokens)})")
