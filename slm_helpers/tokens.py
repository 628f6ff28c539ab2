"""Token datasets: a corpus tokenized once with GPT-2's BPE into flat uint16 files, read a batch at
a time.

    folder = token_dataset("tinystories-valid")    # download, tokenize, cache; instant the next
    time train = TokenFile(folder / "train.bin")
    x, y = get_batch(train, batch_size=32, block_size=256)

Why files: TinyStories is 2.2 GB of text, about 540M tokens. Tokenizing it takes minutes, so it is
done once; holding it as int64 tensors would take 4 GB of memory. A ``.bin`` file is the token ids
and nothing else, two bytes each (GPT-2's 50,257 ids fit in 16 bits), so token i sits at byte 2i and
a batch reads just its windows through ``np.memmap``: the operating system pages in what is touched
and the rest stays on disk. ``meta.json`` beside the two files says what they hold. Which texts
exist and how they are read is data.py's business; left out: shuffling (batches are random windows,
``data.get_batch``), shards and any tokenizer but GPT-2's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import CORPORA, check_val_fraction, data_path, load_file, text_blocks, text_file
from .download import download_dir
from .errors import SLMError
from .tokenizers.bpe import ENDOFTEXT


class TokenFile:
    """A ``.bin`` file of uint16 token ids that indexes like a 1-D LongTensor, reading only what is
    asked for.

    ``len(f)`` is the number of tokens; ``f[index]`` (an int, a slice or a LongTensor of positions,
    as ``data.get_batch`` uses) returns an int64 tensor, so the training loop cannot tell it from a
    tensor.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SLMError(f"token file {self.path} does not exist; prepare it with "
                           "tokens.token_dataset")
        self.num_tokens = self.path.stat().st_size // 2

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, index) -> torch.Tensor:
        # A fresh memmap for every batch costs nothing (no bytes are read until indexed), while one
        # held open for a whole run keeps every page it
        # ever touched counted in the process's memory.
        tokens = np.memmap(self.path, dtype=np.uint16, mode="r")
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        # int64: what embeddings take
        return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))

    def __repr__(self) -> str:
        return f"TokenFile({self.path.name!r}, {self.num_tokens:,} tokens)"


def _safe_cut(text: str) -> int:
    """The last place where ``text`` can be cut without changing its tokens: after a newline that
    has a non-space character on both sides. GPT-2's pre-split never joins such a newline to its
    neighbours, so encoding the two pieces gives exactly the ids of encoding the whole. 0: no such
    place."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0 and (text[i - 1].isspace() or text[i + 1].isspace()):
        i = text.rfind("\n", 0, i)
    return i + 1 if i > 0 else 0


def _file_chunks(path: Path, chunk_chars: int):
    """The text of a UTF-8 file in pieces of about ``chunk_chars`` characters, cut where tokens
    allow."""
    carry = ""
    for block in text_blocks(path, chunk_chars):
        text = carry + block
        cut = _safe_cut(text)
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


def _texts(sources, chunk_chars: int) -> list[tuple[int, Iterable[str]]]:
    """Each file of ``sources`` (corpus names or text files) as (size in bytes, pieces of text), in
    order."""
    texts = []
    for source in sources:
        corpus = CORPORA.get(str(source))
        # small: read whole, cleaned as load_text cleans it
        if corpus is not None and not corpus.streamed:
            for name in corpus.train:
                text = load_file(data_path(name))
                texts.append((len(text.encode("utf-8")), [text]))
        else:  # TinyStories or your own file: streamed, whatever its size
            for path in _downloaded(corpus.train) if corpus else [text_file(source)]:
                texts.append((path.stat().st_size, _file_chunks(path, chunk_chars)))
    return texts


def _downloaded(files) -> list[Path]:
    """The paths of data files too large to ship (TinyStories), downloaded into the cache once."""
    try:
        return [data_path(name) for name in files]
    except SLMError as err:
        raise SLMError(f"{err}; to train without TinyStories, use data: "
                       "tinystories-sample+shakespeare (the shipped stand-in)") from None


def _encode(texts, out_path: Path, desc: str, enc) -> int:
    """Tokenize ``texts`` one after the other into ``out_path`` (uint16), an end-of-text token after
    each; returns the number of tokens written."""
    threads = os.cpu_count() or 1
    written = 0
    with open(out_path, "wb") as out, tqdm(total=sum(size for size, _ in texts), unit="B",
                                           unit_scale=True,
                                           desc=desc, leave=False) as bar:
        for _, chunks in texts:
            chunks = iter(chunks)
            # tiktoken encodes a batch on several threads; <|endoftext|> in the text is TinyStories'
            # separator between stories
            while batch := list(itertools.islice(chunks, threads)):
                for text, ids in zip(batch,
                                     enc.encode_batch(batch, num_threads=threads,
                                                      allowed_special={ENDOFTEXT})):
                    np.asarray(ids, dtype=np.uint16).tofile(out)
                    written += len(ids)
                    bar.update(len(text.encode("utf-8")))
            np.asarray([enc.eot_token], dtype=np.uint16).tofile(out)
            written += 1
    return written


def prepare_tokens(train: list[str | Path], out_dir: str | Path, *,
                   val: list[str | Path] | None = None,
                   val_fraction: float = 0.1, chunk_chars: int = 1 << 20) -> Path:
    """Tokenize text with GPT-2's BPE into ``out_dir/train.bin`` and ``val.bin`` (uint16) plus
    ``meta.json``.

    ``train`` and ``val`` list corpus names or text files. Without ``val``, the last
    ``val_fraction`` of the tokens of ``train`` become the validation split (no shuffling, as
    ``data.train_val_split``). The files appear only when complete: ``meta.json`` is written last.
    """
    from .tokenizers import gpt2_encoding

    if val is None:
        check_val_fraction(val_fraction)
    train_texts = _texts(train, chunk_chars)  # fail on a bad source before any work
    val_texts = _texts(val, chunk_chars) if val is not None else None
    enc = gpt2_encoding()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    train_tmp, val_tmp = out_dir / "train.bin.tmp", out_dir / "val.bin.tmp"
    n_train = _encode(train_texts, train_tmp, "tokenizing", enc)
    if val_texts is not None:
        n_val = _encode(val_texts, val_tmp, "tokenizing val", enc)
    else:  # move the tail into val.bin, then cut it off train.bin
        n_val = n_train - int(n_train * (1 - val_fraction))
        n_train -= n_val
        np.memmap(train_tmp, dtype=np.uint16, mode="r")[n_train:].tofile(val_tmp)
        os.truncate(train_tmp, 2 * n_train)
    os.replace(train_tmp, out_dir / "train.bin")
    os.replace(val_tmp, out_dir / "val.bin")
    meta = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab, "dtype": "uint16",
            "eot_token": enc.eot_token,
            "train": [str(s) for s in train],
            "val": [str(s) for s in val] if val is not None else None,
            "val_fraction": None if val is not None else val_fraction,
            "train_tokens": n_train, "val_tokens": n_val}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_meta(folder: str | Path) -> dict:
    """The ``meta.json`` of a prepared token folder."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise SLMError(f"{folder} holds no prepared tokens (no meta.json); prepare them with "
                       "tokens.token_dataset")
    return json.loads(path.read_text(encoding="utf-8"))


def tokens_root() -> Path:
    """Where prepared token folders are cached: ``$SLM_DATA_DIR/tokens`` or
    ``~/.cache/slm_helpers/tokens``."""
    return download_dir() / "tokens"


def token_dataset(source: str | Path, *, val_fraction: float = 0.1) -> Path:
    """The folder of ``train.bin``/``val.bin``/``meta.json`` for ``source``, prepared on first use.

    ``source`` is a corpus name (``data.CORPORA``: TinyStories is downloaded on demand), a UTF-8
    text file, or a folder that already holds prepared tokens.
    """
    if (Path(source) / "meta.json").is_file():
        return Path(source)
    corpus = CORPORA.get(str(source))
    if corpus is not None:
        key = corpus.name if corpus.val else f"{corpus.name}-val{val_fraction}"
    else:
        path = text_file(source,
                         expected="a UTF-8 text file, a folder of prepared tokens").resolve()
        stat = path.stat()  # a changed file gets a new folder
        stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        fingerprint = hashlib.sha256(stamp.encode()).hexdigest()[:10]
        key = f"{path.stem}-{fingerprint}-val{val_fraction}"
    folder = tokens_root() / key
    if (folder / "meta.json").is_file():
        return folder
    if corpus is None:
        return prepare_tokens([path], folder, val_fraction=val_fraction)
    val = _downloaded(corpus.val) if corpus.val else None
    return prepare_tokens([corpus.name], folder, val=val, val_fraction=val_fraction)
