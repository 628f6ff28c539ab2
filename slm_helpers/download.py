"""Downloads: fetch a file over HTTP once, checked, resumable, with a progress bar.

``download(url, dest, sha256=..., size=...)`` writes ``dest.part`` and renames it only once its size
and SHA-256 check out, so a half file never passes for a whole one; a broken transfer resumes where
it stopped. Which files exist and where they come from is data.py's business, not this module's; it
leaves out retries, mirrors and parallel transfers (run the call again to resume).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .errors import SLMError


@dataclass(frozen=True)
class RemoteFile:
    """Where a data file comes from and how to know we got exactly that file."""

    url: str
    sha256: str | None  # None where no hash is published: the size still catches a truncated file
    size: int


def cache_dir() -> Path:
    """The course's folder in the user's cache: ``$XDG_CACHE_HOME/slm_helpers``, else
    ``~/.cache/slm_helpers``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slm_helpers"


def download_dir() -> Path:
    """Where downloads go: ``$SLM_DATA_DIR`` if set, else ``cache_dir()``."""
    return Path(os.environ.get("SLM_DATA_DIR") or cache_dir())


def download(url: str, dest: str | Path, *, sha256: str | None = None, size: int | None = None,
             timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest`` with a progress bar; check size and SHA-256; never leave half a
    file.

    The bytes go to ``dest.part`` first and are renamed only once they check out. A transfer that
    breaks off from a server that can resume (it answers ``Accept-Ranges: bytes``) keeps its
    ``.part`` file, and the next call asks only for the missing bytes with an HTTP Range request:
    a 2 GB download survives a dropped connection. A server that ignores the Range header sends
    the whole file again (status 200 instead of 206), which simply starts the download over.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    digest = hashlib.sha256()
    resumable = False
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status == 206:  # Partial Content: only the bytes after the ones we have
                with open(part, "rb") as done:
                    while block := done.read(1 << 20):
                        digest.update(block)
            else:
                have = 0
            resumable = response.status == 206 or response.headers.get("Accept-Ranges") == "bytes"
            announced = int(response.headers.get("Content-Length") or 0)
            expected = have + announced if announced else size
            with open(part, "ab" if have else "wb") as out, \
                    tqdm(total=expected, initial=have, unit="B", unit_scale=True, desc=dest.name,
                         leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        # Range Not Satisfiable: the .part is not a prefix of the file; start over
        if err.code == 416 and have:
            part.unlink()
            return download(url, dest, sha256=sha256, size=size, timeout=timeout)
        raise SLMError(f"could not download {dest.name} from {url} (HTTP {err.code} "
                       f"{err.reason})") from None
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
            ConnectionError) as err:
        reason = getattr(err, "reason", err)
        if resumable and part.is_file() and part.stat().st_size > have:
            raise SLMError(f"download of {dest.name} stopped after {part.stat().st_size:,} bytes "
                           f"({reason}); run again to resume it") from None
        if not have:
            part.unlink(missing_ok=True)
        raise SLMError(
            f"could not download {dest.name} from {url} ({reason}); if you are offline, fetch that "
            f"URL on another machine and put the file at {dest} (or in the folder named by "
            "SLM_DATA_DIR)"
        ) from None
    got = part.stat().st_size
    if announced and got != have + announced:  # the server closed the connection early
        if resumable:
            raise SLMError(f"download of {dest.name} stopped after {got:,} of {have + announced:,} "
                           "bytes; run again to resume it")
        part.unlink()
        raise SLMError(f"download of {dest.name} stopped after {got:,} of {announced:,} bytes; run "
                       "again to retry")
    if size is not None and got != size:
        part.unlink()
        raise SLMError(f"download of {dest.name} has {got:,} bytes, expected {size:,}; run again "
                       "to retry")
    if sha256 is not None and digest.hexdigest() != sha256:
        part.unlink()
        raise SLMError(f"download of {dest.name} has SHA-256 {digest.hexdigest()}, expected "
                       f"{sha256}; run again to retry, or report the changed source")
    os.replace(part, dest)
    return dest
