"""Token datasets: a corpus tokenized once with GPT-2's BPE into flat uint16 files, read a batch at a time.

    folder = token_dataset("tinystories-valid")    # download, tokenize, cache; instant the next time
    train = TokenFile(folder / "train.bin")
    x, y = get_batch(train, batch_size=32, block_size=256)

Why files: TinyStories is 2.2 GB of text, about 540M tokens. Tokenizing it takes minutes, so it is
done once; holding it as int64 tensors would take 4 GB of memory. A ``.bin`` file is the token ids and
nothing else, two bytes each (GPT-2's 50,257 ids fit in 16 bits), so token i sits at byte 2i and a
batch reads just its windows through ``np.memmap``: the operating system pages in what is touched and
the rest stays on disk. ``meta.json`` beside the two files says what they hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import CORPORA, RemoteFile, check_val_fraction, data_path, download_dir, load_text
from .tokenizers.bpe import ENDOFTEXT
from .errors import SLMError


_TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES = {  # version 2: the stories GPT-4 wrote (the cleaner half of the dataset)
    "train": RemoteFile(f"{_TINYSTORIES_URL}/TinyStoriesV2-GPT4-train.txt", None, 2_227_753_162),
    "valid": RemoteFile(f"{_TINYSTORIES_URL}/TinyStoriesV2-GPT4-valid.txt", None, 22_502_601),
}

# Data names that token_dataset knows besides corpus names and paths.
DATASETS = {
    "tinystories": "TinyStories: the 2.2 GB train file for training, the valid file for validation",
    "tinystories-valid": "TinyStories' 22 MB valid file alone, split into train and val (the small option)",
    "tinystories-sample+shakespeare": "offline stand-in: the 5 shipped TinyStories, then Tiny Shakespeare",
}


class TokenFile:
    """A ``.bin`` file of uint16 token ids that indexes like a 1-D LongTensor, reading only what is asked for.

    ``len(f)`` is the number of tokens; ``f[index]`` (an int, a slice or a LongTensor of positions, as
    ``data.get_batch`` uses) returns an int64 tensor, so the training loop cannot tell it from a tensor.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SLMError(f"token file {self.path} does not exist; prepare it with tokens.token_dataset")
        self.num_tokens = self.path.stat().st_size // 2

    def __len__(self) -> int:
        return self.num_tokens

    def __getitem__(self, index) -> torch.Tensor:
        # A fresh memmap for every batch costs nothing (no bytes are read until indexed), while one held
        # open for a whole run keeps every page it ever touched counted in the process's memory.
        tokens = np.memmap(self.path, dtype=np.uint16, mode="r")
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))  # int64: what embeddings take

    def __repr__(self) -> str:
        return f"TokenFile({self.path.name!r}, {self.num_tokens:,} tokens)"


def _safe_cut(text: str) -> int:
    """The last place where ``text`` can be cut without changing its tokens: after a newline that has
    a non-space character on both sides. GPT-2's pre-split never joins such a newline to its
    neighbours, so encoding the two pieces gives exactly the ids of encoding the whole. 0: no such place."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0 and (text[i - 1].isspace() or text[i + 1].isspace()):
        i = text.rfind("\n", 0, i)
    return i + 1 if i > 0 else 0


def _file_chunks(path: Path, chunk_chars: int):
    """The text of a UTF-8 file in pieces of about ``chunk_chars`` characters, cut where tokens allow."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig drops a byte-order mark if there is one
            carry = ""
            while block := f.read(chunk_chars):
                text = carry + block
                cut = _safe_cut(text)
                if cut:
                    yield text[:cut]
                carry = text[cut:]
            if carry:
                yield carry
    except UnicodeDecodeError as err:
        raise SLMError(f"data file {path} is not UTF-8 text (bad byte at offset {err.start}); "
                       "convert it to UTF-8 first") from None


def _source_chunks(source: str | Path, chunk_chars: int):
    """(size in bytes, chunks of text) of a corpus name (the shipped, small ones: read whole, cleaned
    as ``load_text`` cleans them) or a text file of any size (streamed)."""
    if str(source) in CORPORA:
        text = load_text(str(source))
        return len(text.encode("utf-8")), [text]
    path = Path(source)
    if not path.is_file():
        raise SLMError(f"data file {path} does not exist; pass a corpus name ({', '.join(CORPORA)}) "
                       "or the path of a UTF-8 text file")
    if path.stat().st_size == 0:
        raise SLMError(f"data file {path} is empty; give it some text to learn from")
    return path.stat().st_size, _file_chunks(path, chunk_chars)


def _encode_sources(sources, out_path: Path, desc: str, chunk_chars: int) -> int:
    """Tokenize ``sources`` one after the other into ``out_path`` (uint16), an end-of-text token after
    each; returns the number of tokens written."""
    from .tokenizers import gpt2_encoding

    enc = gpt2_encoding()
    threads = os.cpu_count() or 1
    opened = [_source_chunks(s, chunk_chars) for s in sources]  # fail on a bad source before any work
    written = 0
    with open(out_path, "wb") as out, tqdm(total=sum(size for size, _ in opened), unit="B", unit_scale=True,
                                           desc=desc, leave=False) as bar:
        for _, chunks in opened:
            pending: list[str] = []
            for chunk in [*chunks, None]:  # None: flush what is pending at the end of the source
                if chunk is not None:
                    pending.append(chunk)
                if pending and (chunk is None or len(pending) == threads):
                    # tiktoken encodes a batch on several threads; <|endoftext|> in the text is
                    # TinyStories' separator between stories
                    for text, ids in zip(pending, enc.encode_batch(pending, num_threads=threads,
                                                                   allowed_special={ENDOFTEXT})):
                        np.asarray(ids, dtype=np.uint16).tofile(out)
                        written += len(ids)
                        bar.update(len(text.encode("utf-8")))
                    pending = []
            np.asarray([enc.eot_token], dtype=np.uint16).tofile(out)
            written += 1
    return written


def prepare_tokens(train: list[str | Path], out_dir: str | Path, *, val: list[str | Path] | None = None,
                   val_fraction: float = 0.1, chunk_chars: int = 1 << 20) -> Path:
    """Tokenize text with GPT-2's BPE into ``out_dir/train.bin`` and ``val.bin`` (uint16) plus ``meta.json``.

    ``train`` and ``val`` list corpus names or text files. Without ``val``, the last ``val_fraction``
    of the tokens of ``train`` become the validation split (no shuffling, as ``data.train_val_split``).
    The files appear only when complete: ``meta.json`` is written last.
    """
    if val is None:
        check_val_fraction(val_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    train_tmp, val_tmp = out_dir / "train.bin.tmp", out_dir / "val.bin.tmp"
    n_train = _encode_sources(train, train_tmp, "tokenizing", chunk_chars)
    if val is not None:
        n_val = _encode_sources(val, val_tmp, "tokenizing val", chunk_chars)
    else:  # move the tail into val.bin, then cut it off train.bin
        n_val = n_train - int(n_train * (1 - val_fraction))
        n_train -= n_val
        np.memmap(train_tmp, dtype=np.uint16, mode="r")[n_train:].tofile(val_tmp)
        os.truncate(train_tmp, 2 * n_train)
    os.replace(train_tmp, out_dir / "train.bin")
    os.replace(val_tmp, out_dir / "val.bin")
    from .tokenizers import gpt2_encoding

    enc = gpt2_encoding()
    meta = {"tokenizer": "gpt2", "vocab_size": enc.n_vocab, "dtype": "uint16", "eot_token": enc.eot_token, "train": [str(s) for s in train],
            "val": [str(s) for s in val] if val is not None else None,
            "val_fraction": None if val is not None else val_fraction,
            "train_tokens": n_train, "val_tokens": n_val}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def load_meta(folder: str | Path) -> dict:
    """The ``meta.json`` of a prepared token folder."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise SLMError(f"{folder} holds no prepared tokens (no meta.json); prepare them with tokens.token_dataset")
    return json.loads(path.read_text(encoding="utf-8"))


def tokens_root() -> Path:
    """Where prepared token folders are cached: ``$SLM_DATA_DIR/tokens`` or ``~/.cache/slm_helpers/tokens``."""
    return download_dir() / "tokens"


def token_dataset(source: str | Path, *, val_fraction: float = 0.1) -> Path:
    """The folder of ``train.bin``/``val.bin``/``meta.json`` for ``source``, prepared on first use.

    ``source`` is a name from ``DATASETS`` (TinyStories, downloaded on demand), a corpus name
    (``shakespeare``, ...), a UTF-8 text file, or a folder that already holds prepared tokens.
    """
    if (Path(source) / "meta.json").is_file():
        return Path(source)
    name = str(source)
    val = None
    if name == "tinystories":
        train, val = [_tinystories("train")], [_tinystories("valid")]
        key = name
    elif name == "tinystories-valid":
        train, key = [_tinystories("valid")], f"{name}-val{val_fraction}"
    elif name == "tinystories-sample+shakespeare":
        train, key = ["tinystories-sample", "shakespeare"], f"{name}-val{val_fraction}"
    elif name in CORPORA:
        train, key = [name], f"{name}-val{val_fraction}"
    else:
        path = Path(source).resolve()
        if not path.is_file():
            raise SLMError(f"data {name!r} is not a dataset ({', '.join(DATASETS)}), a corpus "
                           f"({', '.join(CORPORA)}), a text file or a folder of prepared tokens")
        stat = path.stat()  # a changed file gets a new folder
        fingerprint = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        train, key = [path], f"{path.stem}-{fingerprint}-val{val_fraction}"
    folder = tokens_root() / key
    if (folder / "meta.json").is_file():
        return folder
    return prepare_tokens(train, folder, val=val, val_fraction=val_fraction)


def _tinystories(split: str) -> Path:
    """The TinyStories text file of ``split`` ("train" or "valid"), downloaded into the cache once."""
    remote = TINYSTORIES[split]
    try:
        return data_path(remote.url.rsplit("/", 1)[1], remote)
    except SLMError as err:
        raise SLMError(f"{err}; to train without TinyStories, use data: tinystories-sample+shakespeare "
                       "(the shipped stand-in)") from None
