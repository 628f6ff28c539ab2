"""Corpora: find the text, clean it, split it, and cut it into training batches.

``CORPORA`` lists every text the course knows by name, and ``load_text`` reads one (or any UTF-8
file of yours) through ``text_blocks``, the package's one reader of text files. The small corpora
ship in ``data/``; a missing file (TinyStories, or any of them when the package is installed without
the repository) is downloaded once and checked, by download.py. Left out: tokenizing (tokenizers/,
tokens.py) and shuffling (text is ordered, so the validation split is its end).

Batches come from a *source*: ``TokenWindows`` (random windows of one token stream, for pretraining)
or ``ChatExamples`` (whole instruction examples whose prompts are left out of the loss). A source
``draw``s the examples of a batch from a generator it is given, and cuts out their ``batch``.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .download import RemoteFile, cache_dir, download, download_dir
from .errors import SLMError

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Where each data file comes from, pinned so the bytes
# never change under us (provenance: data/README.md).
_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
DATA_FILES = {
    "tinyshakespeare.txt": RemoteFile(
        "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        1_115_394,
    ),
    "origin_of_species.txt": RemoteFile(
        "https://raw.githubusercontent.com/nopynospy/spell-checker/7573cb8190f48caa887a51d9712b010eb9c41275/pg1228.txt",
        "213355a6ee52de5b59a9575d59d37396dac8dc9bb2a58d31d6362376e3f9c707",
        954_822,
    ),
    "tinystories_sample.txt": RemoteFile(
        "https://raw.githubusercontent.com/stanford-cs336/assignment1-basics/25a8a49f6460c83a30416d42348f2ef11d1dd185/tests/fixtures/tinystories_sample.txt",
        "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43",
        3_794,
    ),
    # TinyStories version 2: the stories GPT-4 wrote (the
    # cleaner half of the dataset); no published hash
    "TinyStoriesV2-GPT4-train.txt": RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-train.txt", None,
                                               2_227_753_162),
    "TinyStoriesV2-GPT4-valid.txt": RemoteFile(f"{_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt", None,
                                               22_502_601),
    "gpt2/vocab.bpe": RemoteFile(
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        456_318,
    ),
    "gpt2/encoder.json": RemoteFile(
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        1_042_301,
    ),
}


@dataclass(frozen=True)
class Corpus:
    """A text known by name: the data files to train on, in order, and the files to validate on
    where it has its own (else the last ``val_fraction`` of the training text is the validation
    split). ``streamed``: too large to read whole, so only tokenizer gpt2 takes it, tokenized as it
    streams in."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    note: str = ""
    streamed: bool = False


CORPORA = {corpus.name: corpus for corpus in [
    Corpus("shakespeare", ("tinyshakespeare.txt",),
           note="Tiny Shakespeare: 1 MB of the plays (lessons 1-7, 9, 10)"),
    Corpus("darwin", ("origin_of_species.txt",),
           note="On the Origin of Species (1859), without Project Gutenberg's header and licence"),
    Corpus("tinystories-sample", ("tinystories_sample.txt",),
           note="five TinyStories, shipped (lesson 8's demo)"),
    Corpus("tinystories", ("TinyStoriesV2-GPT4-train.txt",), ("TinyStoriesV2-GPT4-valid.txt",),
           streamed=True,
           note="TinyStories: the 2.2 GB train file for training, the valid file for validation"),
    Corpus("tinystories-valid", ("TinyStoriesV2-GPT4-valid.txt",), streamed=True,
           note="TinyStories' 22 MB valid file alone, split into train and val (the small option)"),
    Corpus("tinystories-sample+shakespeare", ("tinystories_sample.txt", "tinyshakespeare.txt"),
           note="offline stand-in for TinyStories: the five shipped stories, then Tiny "
                "Shakespeare"),
]}


def data_path(filename: str) -> Path:
    """Path of a file of ``DATA_FILES``: in ``$SLM_DATA_DIR``, the repository's ``data/`` or the
    cache, else downloaded (checked) into ``download_dir()`` on first use."""
    env = os.environ.get("SLM_DATA_DIR")
    for folder in [*([Path(env)] if env else []), REPO_DATA_DIR, cache_dir()]:
        if (folder / filename).is_file():
            return folder / filename
    if filename not in DATA_FILES:
        raise SLMError(f"unknown data file {filename!r}; known files: "
                       f"{', '.join(sorted(DATA_FILES))}")
    remote = DATA_FILES[filename]
    return download(remote.url, download_dir() / filename, sha256=remote.sha256, size=remote.size)


def text_file(path: str | Path, *, expected: str = "a UTF-8 text file") -> Path:
    """``path`` if it is a file with something in it, else an error that says what it is and what to
    pass."""
    path = Path(path)
    instead = f"pass {expected} or a corpus name ({', '.join(CORPORA)})"
    if path.is_dir():
        raise SLMError(f"{path} is a directory, not a text file; {instead}")
    if not path.is_file():
        raise SLMError(f"data file {path} does not exist; {instead}")
    if path.stat().st_size == 0:
        raise _empty(path)
    return path


def text_blocks(path: str | Path, block_chars: int = -1) -> Iterator[str]:
    """The text of a UTF-8 file, ``block_chars`` characters at a time (-1: all of it at once).

    The one reader of text in the package: a byte-order mark at the start is dropped (Darwin's file
    has one) and line endings become "\\n", whether the file is read whole or streamed.
    """
    return _blocks(text_file(path), block_chars)  # the file is checked now, not at the first block


def _blocks(path: Path, block_chars: int) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            while block := f.read(block_chars):
                yield block
    except UnicodeDecodeError:
        raise SLMError(f"data file {path} is not UTF-8 text (bad byte at offset "
                       f"{_first_bad_byte(path):,}); convert it to UTF-8 first") from None


def _first_bad_byte(path: Path) -> int:
    """Where the first byte that is not UTF-8 sits in ``path`` (a text stream counts from its last
    read)."""
    decoder, done = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            # the start of a character cut off by the previous block
            held = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                return done - held + err.start
            if not block:
                return done
            done += len(block)


def _empty(path: Path) -> SLMError:
    return SLMError(f"data file {path} is empty; give it some text to learn from")


def strip_gutenberg(text: str) -> str:
    """Keep only the book: drop Project Gutenberg's header and licence if the markers are there."""
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start == -1 or end == -1:
        return text
    body_start = text.index("\n", start) + 1
    body = text[body_start:end].strip()
    # Some eBooks (#1228, Darwin) open with Gutenberg's
    # note on their other editions: not the author's words.
    body = re.sub(r"\AThere are several editions of this ebook in the Project Gutenberg "
                  r"collection\..*?\n{3,}",
                  "", body, flags=re.DOTALL | re.IGNORECASE)
    return body + "\n"


def load_file(path: str | Path) -> str:
    """One text file read whole and cleaned as every corpus is (``strip_gutenberg``)."""
    text = "".join(text_blocks(path))
    if not text.strip():
        raise _empty(Path(path))
    return strip_gutenberg(text)


def load_text(name_or_path: str | Path) -> str:
    """A corpus by name (a key of ``CORPORA``: its training files, one after the other) or any UTF-8
    file."""
    corpus = CORPORA.get(str(name_or_path))
    if corpus is None:
        return load_file(name_or_path)
    if corpus.streamed:
        raise SLMError(f"corpus {corpus.name!r} is too large to read whole; train on it with "
                       "tokenizer: gpt2")
    return "".join(load_file(data_path(name)) for name in corpus.train)


def train_val_split(data, val_fraction: float = 0.1):
    """First ``1 - val_fraction`` for training, the rest for validation (no shuffling: text is
    ordered)."""
    check_val_fraction(val_fraction)
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise SLMError(f"val_fraction must be between 0 and 1, got {val_fraction}")


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens (x) and the same windows shifted by
    one (y)."""
    if len(data) < block_size + 1:
        raise SLMError(f"this split has {len(data):,} tokens but a window needs block_size + 1 = "
                       f"{block_size + 1:,}; use a smaller block_size or more text")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return batch_at(data, starts, block_size, device)


def batch_at(data, starts: torch.Tensor, block_size: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of ``block_size`` tokens that begin at ``starts`` (x), and the same shifted by
    one (y).

    ``data`` is a 1-D LongTensor, or anything that indexes like one, such as a ``tokens.TokenFile``
    on disk.
    """
    windows = data[starts[:, None] + torch.arange(block_size + 1)]  # one gather, no Python loop
    device = torch.device(device)
    if device.type == "cuda":  # pinned memory makes the copy asynchronous (non_blocking) and faster
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]


# F.cross_entropy's default ignore_index: a target equal
# to it adds nothing to the loss (nor its mean's count).
IGNORE_INDEX = -100


class TokenWindows:
    """Batch source: random windows of ``seq_len`` tokens of one token stream (``data``: a 1-D
    LongTensor or a ``tokens.TokenFile``), as ``get_batch`` draws them. ``name`` names the split in
    errors."""

    def __init__(self, data, seq_len: int, name: str = "this"):
        if len(data) < seq_len + 1:
            raise SLMError(f"the {name} split has {len(data):,} tokens, fewer than seq_len + 1 = "
                           f"{seq_len + 1}; use more text or a smaller block_size (or "
                           "train.seq_len)")
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return len(self.data)  # tokens

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The starts of ``n`` random windows."""
        return torch.randint(len(self.data) - self.seq_len, (n,), generator=generator)

    def batch(self, picks: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor,
                                                                                      torch.Tensor]:
        """The windows that begin at ``picks`` (x) and the same shifted by one token (y)."""
        return batch_at(self.data, picks, self.seq_len, device)


class ChatExamples:
    """Batch source for instruction tuning: each example a (prompt ids, reply ids) pair, e.g. a
    question in a chat template and its answer. A row of a batch is one example, prompt then reply,
    cut to ``seq_len + 1`` tokens and padded with ``pad_id``; its targets are ``IGNORE_INDEX`` where
    they are prompt tokens or padding, so the model learns to write the replies, not to predict the
    prompts."""

    def __init__(self, examples, seq_len: int, *, pad_id: int = 0, name: str = "this"):
        self.examples = [(list(map(int, prompt)), list(map(int, reply))) for prompt,
                         reply in examples]
        if not self.examples:
            raise SLMError(f"the {name} split has no examples; give it (prompt ids, reply ids) "
                           "pairs")
        for i, (prompt, reply) in enumerate(self.examples):
            if not prompt or not reply or len(prompt) > seq_len:
                raise SLMError(f"example {i} of the {name} split has a prompt of {len(prompt)} and "
                               f"a reply of {len(reply)} tokens; each needs both, and the prompt "
                               f"at most seq_len = {seq_len}")
        self.seq_len, self.pad_id = seq_len, pad_id

    def __len__(self) -> int:
        return sum(len(prompt) + len(reply) for prompt, reply in self.examples)  # tokens

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The indices of ``n`` random examples."""
        return torch.randint(len(self.examples), (n,), generator=generator)

    def batch(self, picks: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor,
                                                                                      torch.Tensor]:
        x = torch.full((len(picks), self.seq_len), self.pad_id, dtype=torch.long)
        y = torch.full((len(picks), self.seq_len), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(picks.tolist()):
            prompt, reply = self.examples[i]
            ids = torch.tensor((prompt + reply)[:self.seq_len + 1])
            x[row, :len(ids) - 1], y[row, :len(ids) - 1] = ids[:-1], ids[1:]
            # the targets that are prompt tokens: the reply's first is kept
            y[row, :len(prompt) - 1] = IGNORE_INDEX
        return x.to(device), y.to(device)


def as_source(data, seq_len: int, name: str = "this"):
    """``data`` as a batch source: itself if it is one (of ``seq_len`` tokens), else its
    ``TokenWindows``."""
    if not hasattr(data, "draw"):
        return TokenWindows(data, seq_len, name)
    if data.seq_len != seq_len:
        raise SLMError(f"the {name} split's examples are {data.seq_len} tokens long but training "
                       f"uses seq_len = {seq_len}; make them alike")
    return data
