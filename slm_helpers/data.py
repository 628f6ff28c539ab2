"""Corpora: find the text, clean it, split it, and cut it into training batches.

The repository ships every corpus in ``data/``. A copy of the package installed without the
repository (``pip install`` from Git, say) downloads a missing file once from its public
source into a cache folder, checked, with download.py, and reuses it from then on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .download import RemoteFile, cache_dir, download, download_dir
from .errors import SLMError

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Provenance of each file: data/README.md. Pinned commits, so the bytes never change under us.
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

CORPORA = {
    "shakespeare": "tinyshakespeare.txt",
    "darwin": "origin_of_species.txt",
    "tinystories-sample": "tinystories_sample.txt",
}


def _search_dirs() -> list[Path]:
    dirs = [Path(os.environ["SLM_DATA_DIR"])] if os.environ.get("SLM_DATA_DIR") else []
    return dirs + [REPO_DATA_DIR, cache_dir()]


def data_path(filename: str, remote: RemoteFile | None = None) -> Path:
    """Path of a known data file, downloading it into the cache on first use if it is missing.

    ``remote`` says where a file that is not in ``DATA_FILES`` comes from (TinyStories, see tokens.py).
    """
    for folder in _search_dirs():
        if (folder / filename).is_file():
            return folder / filename
    if remote is None and filename not in DATA_FILES:
        raise SLMError(f"unknown data file {filename!r}; known files: {', '.join(sorted(DATA_FILES))}")
    remote = remote or DATA_FILES[filename]
    return download(remote.url, download_dir() / filename, sha256=remote.sha256, size=remote.size)


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file for training, with clear errors for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"data file {path} does not exist; pass the path of a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig drops a byte-order mark if there is one
    except UnicodeDecodeError as err:
        raise SLMError(f"data file {path} is not UTF-8 text (bad byte at offset {err.start}); "
                       "convert it to UTF-8 first") from None
    if not text.strip():
        raise SLMError(f"data file {path} is empty; give it some text to learn from")
    return text


def strip_gutenberg(text: str) -> str:
    """Keep only the book: drop Project Gutenberg's header and licence if the markers are there."""
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start == -1 or end == -1:
        return text
    body_start = text.index("\n", start) + 1
    body = text[body_start:end].strip()
    # Some eBooks (#1228, Darwin) open with Gutenberg's note on their other editions: not the author's words.
    body = re.sub(r"\AThere are several editions of this ebook in the Project Gutenberg collection\..*?\n{3,}",
                  "", body, flags=re.DOTALL | re.IGNORECASE)
    return body + "\n"


def load_text(name_or_path: str | Path) -> str:
    """A corpus by name (``shakespeare``, ``darwin``, ``tinystories-sample``) or any UTF-8 file."""
    if str(name_or_path) in CORPORA:
        return strip_gutenberg(read_text_file(data_path(CORPORA[str(name_or_path)])))
    return strip_gutenberg(read_text_file(name_or_path))


def train_val_split(data, val_fraction: float = 0.1):
    """First ``1 - val_fraction`` for training, the rest for validation (no shuffling: text is ordered)."""
    check_val_fraction(val_fraction)
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise SLMError(f"val_fraction must be between 0 and 1, got {val_fraction}")


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens (x) and the same windows shifted by one (y)."""
    if len(data) < block_size + 1:
        raise SLMError(f"this split has {len(data):,} tokens but a window needs block_size + 1 = "
                       f"{block_size + 1:,}; use a smaller block_size or more text")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    return batch_at(data, starts, block_size, device)


def batch_at(data, starts: torch.Tensor, block_size: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of ``block_size`` tokens that begin at ``starts`` (x), and the same shifted by one (y).

    ``data`` is a 1-D LongTensor, or anything that indexes like one, such as a ``tokens.TokenFile`` on disk.
    """
    windows = data[starts[:, None] + torch.arange(block_size + 1)]  # one gather, no Python loop
    device = torch.device(device)
    if device.type == "cuda":  # pinned memory lets the copy overlap with the GPU's work
        windows = windows.pin_memory().to(device, non_blocking=True)
    else:
        windows = windows.to(device)
    return windows[:, :-1], windows[:, 1:]
