"""tokens.py and the resumable download: TinyStories from a local server, uint16 token files,
batches from disk."""

import hashlib
import http.server
import json
import resource
import socket
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slm_helpers import data, tokens
from slm_helpers.cli import main
from slm_helpers.config import build_trainer, load_config
from slm_helpers.data import get_batch
from slm_helpers.download import RemoteFile, download
from slm_helpers.errors import SLMError
from slm_helpers.tokenizers import gpt2_encoding
from slm_helpers.tokens import TokenFile, _file_chunks, load_meta, prepare_tokens, token_dataset

STORIES = "".join(f"Once upon a time, there was a little {animal} named {name}. {name} liked to "
                  f"play.\nOne day, {name} found a big red ball.\n<|endoftext|>\n"
                  for animal in ("cat", "dog", "bird", "fish")
                  for name in ("Tim", "Sue", "Max", "Lily")) * 12
PAYLOAD = STORIES.encode()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    """Serves PAYLOAD at /valid.txt on 127.0.0.1, honouring Range requests like a real file server.

    ``mode``: "range" (206 for a Range request), "ignore" (always the whole file with 200), "cut"
    (announce the whole file, send half, hang up). Every request's Range header is recorded.
    """
    state = SimpleNamespace(mode="range", ranges=[])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/valid.txt":
                self.send_error(404)
                return
            asked = self.headers.get("Range")
            state.ranges.append(asked)
            start = int(asked.split("=")[1].rstrip("-")) if asked and state.mode == "range" else 0
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            body = PAYLOAD[start:]
            self.send_response(206 if start else 200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range",
                                 f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if state.mode == "cut" else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}/valid.txt"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# ---------------------------------------------------------------- restartable download

def test_download_resumes_a_part_file_with_a_range_request(server, tmp_path):
    dest = tmp_path / "valid.txt"
    # what an earlier, broken download left
    dest.with_name("valid.txt.part").write_bytes(PAYLOAD[:1000])
    # the hash covers the bytes kept from before
    download(server.url, dest, sha256=SHA, size=len(PAYLOAD))
    assert server.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD and not dest.with_name("valid.txt.part").exists()


def test_download_starts_over_when_the_server_ignores_range(server, tmp_path):
    server.mode = "ignore"
    dest = tmp_path / "valid.txt"
    dest.with_name("valid.txt.part").write_bytes(b"junk that must not survive")
    download(server.url, dest, sha256=SHA, size=len(PAYLOAD))
    assert server.ranges == ["bytes=26-"]
    assert dest.read_bytes() == PAYLOAD


def test_download_starts_over_when_the_part_is_too_long(server, tmp_path):
    dest = tmp_path / "valid.txt"
    dest.with_name("valid.txt.part").write_bytes(PAYLOAD + b"extra")  # 416 Range Not Satisfiable
    download(server.url, dest, sha256=SHA)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 5}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_its_part_and_resumes(server, tmp_path):
    server.mode = "cut"
    dest = tmp_path / "valid.txt"
    with pytest.raises(SLMError, match="run again to resume"):
        download(server.url, dest, size=len(PAYLOAD))
    part = dest.with_name("valid.txt.part")
    assert part.stat().st_size == len(PAYLOAD) // 2 and not dest.exists()
    server.mode = "range"
    download(server.url, dest, sha256=SHA, size=len(PAYLOAD))
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert dest.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- TinyStories on demand

VALID = "TinyStoriesV2-GPT4-valid.txt"


@pytest.fixture
def local_tinystories(server, tmp_path, monkeypatch):
    """TinyStories' valid file served from 127.0.0.1; downloads and token folders under tmp_path."""
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setitem(data.DATA_FILES, VALID, RemoteFile(server.url, SHA, len(PAYLOAD)))
    return server


def test_tinystories_is_downloaded_tokenized_and_cached(local_tinystories, tmp_path):
    folder = token_dataset("tinystories-valid", val_fraction=0.1)
    assert folder.parent == tmp_path / "data" / "tokens"
    assert (tmp_path / "data" / VALID).read_bytes() == PAYLOAD  # the download is kept too
    meta = load_meta(folder)
    enc = gpt2_encoding()
    # separators -> id 50256
    ids = enc.encode(STORIES, allowed_special={"<|endoftext|>"}) + [enc.eot_token]
    assert meta["train_tokens"] + meta["val_tokens"] == len(ids)
    assert meta["val_tokens"] == len(ids) - int(len(ids) * 0.9)
    assert (meta["vocab_size"], meta["eot_token"], meta["dtype"]) == (50257, 50256, "uint16")
    train, val = TokenFile(folder / "train.bin"), TokenFile(folder / "val.bin")
    assert train[:].tolist() + val[:].tolist() == ids
    assert token_dataset("tinystories-valid", val_fraction=0.1) == folder
    assert local_tinystories.ranges == [None]  # one download, one tokenization, then the cache


def test_tinystories_offline_is_a_clear_error(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(data.DATA_FILES, VALID,
                        RemoteFile(f"http://127.0.0.1:{port}/v.txt", None, 10))
    with pytest.raises(SLMError, match="if you are offline") as err:
        token_dataset("tinystories-valid")
    assert "\n" not in str(err.value) and "tinystories-sample+shakespeare" in str(err.value)


def test_tinystories_tokens_in_the_cache_need_no_download(local_tinystories, tmp_path):
    folder = token_dataset("tinystories-valid")
    (tmp_path / "data" / VALID).unlink()
    assert token_dataset("tinystories-valid") == folder and local_tinystories.ranges == [None]


def test_a_prepared_folder_is_used_as_is(tmp_path):
    folder = prepare_tokens(["tinystories-sample"], tmp_path / "prepared", val_fraction=0.2)
    assert token_dataset(folder) == folder


# ---------------------------------------------------------------- tokenizing

SHAKESPEARE_HEAD = data.load_text("shakespeare")[:60_000]


def test_chunks_are_cut_where_tokens_do_not_change(tmp_path):
    """Streaming a file in small pieces gives exactly the ids of encoding it whole."""
    path = tmp_path / "play.txt"
    path.write_text(SHAKESPEARE_HEAD, encoding="utf-8")
    chunks = list(_file_chunks(path, chunk_chars=500))
    assert len(chunks) > 50 and "".join(chunks) == SHAKESPEARE_HEAD
    folder = prepare_tokens([path], tmp_path / "tok", val_fraction=0.25, chunk_chars=500)
    enc = gpt2_encoding()
    whole = enc.encode(SHAKESPEARE_HEAD, allowed_special={"<|endoftext|>"}) + [enc.eot_token]
    got = np.concatenate([np.fromfile(folder / "train.bin", dtype=np.uint16),
                          np.fromfile(folder / "val.bin", dtype=np.uint16)])
    assert got.tolist() == whole


def test_a_stream_is_tokenized_as_it_comes_not_gathered_first(tmp_path):
    """TinyStories' 2.2 GB must never be in memory at once: tokens of early pieces are on disk
    before the stream has given its last piece."""
    out, written_so_far = tmp_path / "t.bin", []

    def pieces():
        for i in range(40):
            written_so_far.append(out.stat().st_size if out.exists() else 0)
            yield f"Line {i} of a stream.\n"

    tokens._encode([(0, pieces())], out, "test", gpt2_encoding())
    assert written_so_far[-1] > 0


def test_prepare_with_a_separate_val_source(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("The cat sat on the mat.\n", encoding="utf-8")
    b.write_text("A dog.\n", encoding="utf-8")
    folder = prepare_tokens([a, "tinystories-sample"], tmp_path / "tok", val=[b])
    enc = gpt2_encoding()
    meta = load_meta(folder)
    assert TokenFile(folder / "val.bin")[:].tolist() == enc.encode("A dog.\n") + [enc.eot_token]
    # an end-of-text after each source
    first = enc.encode("The cat sat on the mat.\n") + [enc.eot_token]
    assert TokenFile(folder / "train.bin")[:len(first)].tolist() == first
    assert (meta["val_fraction"] is None
            and meta["train_tokens"] == len(TokenFile(folder / "train.bin")))
    # no temporaries
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_a_text_file_gets_its_own_cached_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "notes.txt"
    path.write_text("Some notes about tokens.\n" * 50, encoding="utf-8")
    folder = token_dataset(path)
    assert folder.parent == tmp_path / "cache" / "tokens" and folder.name.startswith("notes-")
    assert token_dataset(path) == folder
    # a changed file is tokenized again
    path.write_text("Other notes now.\n" * 50, encoding="utf-8")
    assert token_dataset(path) != folder


@pytest.mark.parametrize("content, match", [(b"\xff\xfe bad", "not UTF-8"), (b"", "empty")])
def test_bad_text_files(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(SLMError, match=match):
        prepare_tokens([path], tmp_path / "tok")


def test_unknown_source_names_the_choices():
    with pytest.raises(SLMError,
                       match="no-such-corpus does not exist.*folder of prepared "
                             "tokens.*tinystories-valid"):
        token_dataset("no-such-corpus")


def test_a_directory_is_called_a_directory(tmp_path):
    with pytest.raises(SLMError,
                       match=f"^{tmp_path} is a directory, not a text file; pass a UTF-8 text "
                             "file, "
                                       "a folder of prepared tokens or a corpus name .shakespeare, "
                                       ""):
        token_dataset(tmp_path)


def test_cli_gpt2_train_on_a_directory_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path / "cache"))
    (tmp_path / "some_folder").mkdir()
    rc = main(["train", "--preset", "tinystories-tiny", "--data", str(tmp_path / "some_folder"),
               "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'some_folder'} is a directory, not a text file;")
    assert not (tmp_path / "cache").exists()  # nothing was tokenized


# ---------------------------------------------------------------- reading batches from disk

def test_token_file_indexes_like_a_tensor(tmp_path):
    ids = torch.randint(0, 50257, (5000,))
    ids.numpy().astype(np.uint16).tofile(tmp_path / "t.bin")
    f = TokenFile(tmp_path / "t.bin")
    assert len(f) == 5000 and "5,000 tokens" in repr(f)
    assert f[7].item() == ids[7].item() and torch.equal(f[10:20], ids[10:20])
    assert f[torch.tensor([[1, 2], [3, 4]])].dtype == torch.int64
    a = get_batch(f, 8, 32, generator=torch.Generator().manual_seed(3))
    b = get_batch(ids, 8, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_batches_from_a_large_file_read_only_their_windows(tmp_path):
    """A 1 GB token file (sparse: no disk used) gives batches without the process growing by a
    gigabyte."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(2 * 500_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    big = TokenFile(path)
    for _ in range(20):
        x, y = get_batch(big, 16, 256)
    assert x.shape == (16, 256) and len(big) == 500_000_000
    # far less than 1 GB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000


def test_gpt2_config_trains_from_token_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    run = load_config("tinystories-tiny",
                      ["data=tinystories-sample", "val_fraction=0.3", "model.n_layer=1",
                       "model.n_embd=16", "model.n_head=2", "model.block_size=16",
                       "train.batch_size=2", "train.max_iters=2", "train.eval_iters=1",
                       "train.dtype=float32"])
    trainer = build_trainer(run, out_dir=tmp_path / "run")
    assert isinstance(trainer.splits["train"],
                      TokenFile) and trainer.model.config.vocab_size == 50257
    history = trainer.fit(progress=False)
    assert history[-1]["step"] == 2 and history[0]["val"] == pytest.approx(np.log(50257), abs=0.5)
    saved = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved["kind"] == "eval" and saved["step"] == 2
