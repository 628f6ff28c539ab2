"""data.py and download.py: downloads against a local HTTP server, the corpus registry, reading and
cleaning text, splits, batches."""

import hashlib
import http.server
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slm_helpers import data
from slm_helpers import download as download_module
from slm_helpers.cli import main
from slm_helpers.data import (
    IGNORE_INDEX,
    ChatExamples,
    TokenWindows,
    as_source,
    get_batch,
    load_text,
    strip_gutenberg,
    text_blocks,
    train_val_split,
)
from slm_helpers.download import RemoteFile, download
from slm_helpers.errors import SLMError

SHAKESPEARE = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"

# ~60 KB: several chunks
PAYLOAD = b"".join(b"line %d of a small test corpus\n" % i for i in range(2000))


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www, recording the paths it was asked for."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "corpus.txt").write_bytes(PAYLOAD)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------- download

def test_download_success_checks_size_and_hash(server, tmp_path):
    dest = tmp_path / "cache" / "sub" / "corpus.txt"  # parent folders are created
    got = download(f"{server.url}/corpus.txt", dest, sha256=SHA, size=len(PAYLOAD))
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["corpus.txt"]  # no .part left behind


@pytest.mark.parametrize("kind", ["sha256", "size"])
def test_download_mismatch_leaves_no_file(server, tmp_path, kind):
    dest = tmp_path / "cache" / "corpus.txt"
    wrong = {"sha256": {"sha256": "0" * 64, "size": len(PAYLOAD)},
             "size": {"sha256": SHA, "size": len(PAYLOAD) + 1}}[kind]
    with pytest.raises(SLMError, match="corpus.txt") as err:
        download(f"{server.url}/corpus.txt", dest, **wrong)
    assert ("SHA-256" if kind == "sha256" else f"expected {len(PAYLOAD) + 1:,}") in str(err.value)
    assert list(dest.parent.iterdir()) == []  # neither the file nor corpus.txt.part


def test_download_unreachable_server_says_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/corpus.txt"
    dest = tmp_path / "cache" / "corpus.txt"
    with pytest.raises(SLMError) as err:
        download(url, dest, timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert "corpus.txt" in message and url in message and str(dest) in message
    assert list(dest.parent.iterdir()) == []


def test_download_http_error_is_an_slm_error(server, tmp_path):
    dest = tmp_path / "missing.txt"
    with pytest.raises(SLMError, match="missing.txt"):
        download(f"{server.url}/missing.txt", dest)
    assert not dest.exists() and not dest.with_name("missing.txt.part").exists()


def test_download_cut_short_by_the_server_is_rejected(tmp_path):
    """A server that announces more bytes than it sends: without a size to check, Content-Length
    catches it."""

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(SLMError, match="5,000 of 100,000"):
            download(f"http://127.0.0.1:{httpd.server_port}/f.txt", tmp_path / "f.txt")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(tmp_path.iterdir()) == []


def test_download_names_still_import_from_data():
    assert (data.RemoteFile, data.download, data.download_dir) == \
           (RemoteFile, download, download_module.download_dir)


def test_data_path_downloads_once_then_reuses_the_cache(server, tmp_path, monkeypatch):
    cache = tmp_path / "slm-data"
    monkeypatch.setenv("SLM_DATA_DIR", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setitem(data.DATA_FILES, "unit-test-corpus.txt",
                        RemoteFile(f"{server.url}/corpus.txt", SHA, len(PAYLOAD)))
    first = data.data_path("unit-test-corpus.txt")
    assert first == cache / "unit-test-corpus.txt" and first.read_bytes() == PAYLOAD
    second = data.data_path("unit-test-corpus.txt")
    assert second == first
    assert server.requests == ["/corpus.txt"]  # one request in all


def test_data_path_without_data_dir_downloads_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setitem(data.DATA_FILES, "unit-test-corpus.txt",
                        RemoteFile(f"{server.url}/corpus.txt", SHA, len(PAYLOAD)))
    assert (data.data_path("unit-test-corpus.txt")
            == tmp_path / "xdg-cache" / "slm_helpers" / "unit-test-corpus.txt")


def test_data_path_unknown_file():
    with pytest.raises(SLMError, match="unknown data file 'no-such-file.txt'"):
        data.data_path("no-such-file.txt")


def test_every_corpus_names_known_data_files():
    """One registry: each corpus is made of files that DATA_FILES says how to fetch."""
    for name, corpus in data.CORPORA.items():
        assert corpus.name == name and corpus.train and corpus.note
        assert set(corpus.train + corpus.val) <= set(data.DATA_FILES), name


def test_shipped_files_match_their_registry_entries():
    """The repository's data/ files are the pinned bytes the downloader would fetch."""
    for name in ("tinyshakespeare.txt", "origin_of_species.txt", "tinystories_sample.txt"):
        path = data.REPO_DATA_DIR / name
        remote = data.DATA_FILES[name]
        assert path.stat().st_size == remote.size, name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == remote.sha256, name


# ---------------------------------------------------------------- loading text

def test_load_darwin_has_no_gutenberg_header_or_licence():
    text = load_text("darwin")
    assert "*** START" not in text and "*** END" not in text
    assert "project gutenberg" not in text.lower()
    assert "\ufeff" not in text
    assert text.startswith("On\nthe Origin of Species")  # the title page of the 1859 edition
    assert text.rstrip().endswith("Zebra, stripes on, 163.")  # the last line of Darwin's index
    assert len(text) > 900_000


def test_load_shakespeare_is_the_shipped_file():
    assert load_text("shakespeare") == Path(SHAKESPEARE).read_text(encoding="utf-8")


def test_shipped_files_need_no_byte_order_mark_rule_but_darwin():
    """The reader drops a byte-order mark: only Darwin's file has one, so no other shipped text
    changes."""
    starts = {name: (data.REPO_DATA_DIR / name).read_bytes()[:3] for name in
              ("tinyshakespeare.txt", "origin_of_species.txt", "tinystories_sample.txt")}
    assert [name for name,
            head in starts.items() if head == b"\xef\xbb\xbf"] == ["origin_of_species.txt"]


def test_a_multi_file_corpus_is_its_files_in_order():
    assert (load_text("tinystories-sample+shakespeare")
            == load_text("tinystories-sample") + load_text("shakespeare"))


def test_a_streamed_corpus_is_not_read_whole():
    with pytest.raises(SLMError, match="too large to read whole.*tokenizer: gpt2"):
        load_text("tinystories")


def test_text_blocks_streams_the_same_text_it_reads_whole(tmp_path):
    path = tmp_path / "mixed.txt"
    # BOM, Windows and old Mac line ends
    path.write_bytes(("\ufeff" + "one\r\ntwo\rthree\n" * 300).encode("utf-8"))
    whole = "".join(text_blocks(path))
    assert whole == "one\ntwo\nthree\n" * 300
    assert "".join(text_blocks(path, block_chars=7)) == whole


def test_load_text_from_a_path(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes("\ufeffhéllo wörld\n".encode("utf-8"))
    assert load_text(path) == "héllo wörld\n"  # the byte-order mark is dropped
    assert load_text(str(path)) == "héllo wörld\n"


def test_strip_gutenberg_hand_example():
    book = ("header\nlicence\n*** START OF THIS BOOK ***\n\nCHAPTER I.\nText.\n\n"
            "*** END OF THIS BOOK ***\nlicence\n")
    assert strip_gutenberg(book) == "CHAPTER I.\nText.\n"
    assert strip_gutenberg("no markers here\n") == "no markers here\n"


@pytest.mark.parametrize("content, match", [
    (None, "does not exist; pass a UTF-8 text file or a corpus name .shakespeare, darwin"),
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (b"abc\xe9def", "not UTF-8.*offset 3"),  # Latin-1 'e acute' is not valid UTF-8
])
def test_load_text_bad_files(tmp_path, content, match):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SLMError, match=match) as err:
        load_text(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_bad_byte_is_found_where_it_is_even_when_streaming(tmp_path):
    path = tmp_path / "corpus.txt"
    # past the first read of a stream, and with an 'é' cut in two at the 1 MiB mark
    path.write_bytes(b"a" + "é".encode("utf-8") * 600_000 + b"\xff" + b"tail\n")
    for block_chars in (-1, 100):
        with pytest.raises(SLMError, match=r"bad byte at offset 1,200,001\)"):
            "".join(text_blocks(path, block_chars))


def test_a_directory_is_called_a_directory(tmp_path):
    with pytest.raises(SLMError) as err:
        load_text(tmp_path)
    assert str(err.value) == (f"{tmp_path} is a directory, not a text file; pass a UTF-8 text file "
                              f"or a corpus name ({', '.join(data.CORPORA)})")


def test_cli_train_on_a_directory_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "some_folder"
    folder.mkdir()
    rc = main(["train", "--preset", "shakespeare-char-cpu", "--data", f"{folder}/", "--out",
               str(tmp_path / "run"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {folder} is a directory, not a text file; pass a UTF-8 text "
                          "file or a corpus name (")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- split and batches

def test_train_val_split_sizes():
    ids = torch.arange(1000)
    train, val = train_val_split(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), ids)  # in order, nothing lost
    train, val = train_val_split("abcdefghij", 0.25)  # works on any sequence: int(10 * 0.75) = 7
    assert (train, val) == ("abcdefg", "hij")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_train_val_split_bad_fraction(fraction):
    with pytest.raises(SLMError, match="val_fraction"):
        train_val_split(torch.arange(10), fraction)


def test_get_batch_windows_come_from_the_data():
    g = torch.Generator().manual_seed(0)
    # distinct values: a value tells where a window starts
    source = torch.randperm(5000, generator=g)
    where = torch.empty(5000, dtype=torch.long)
    where[source] = torch.arange(5000)
    x, y = get_batch(source, batch_size=16, block_size=12, generator=g)
    assert x.shape == y.shape == (16, 12) and x.dtype == y.dtype == torch.long
    for row_x, row_y in zip(x, y):
        start = where[row_x[0]].item()
        assert torch.equal(row_x, source[start:start + 12])
        assert torch.equal(row_y, source[start + 1:start + 13])  # y is x shifted by one


def test_get_batch_is_deterministic_with_a_seeded_generator():
    source = torch.arange(10_000)
    a = get_batch(source, 8, 16, generator=torch.Generator().manual_seed(7))
    b = get_batch(source, 8, 16, generator=torch.Generator().manual_seed(7))
    c = get_batch(source, 8, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_get_batch_reaches_every_window_and_no_further():
    source = torch.arange(10)
    x, y = get_batch(source, 200, 8, generator=torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1}  # 10 tokens hold exactly two windows of 8 + 1
    x, y = get_batch(source, 3, 9)  # one window only
    assert torch.equal(x, source[:9].expand(3, 9)) and torch.equal(y, source[1:].expand(3, 9))


def test_get_batch_block_size_too_large():
    with pytest.raises(SLMError, match="block_size"):
        get_batch(torch.arange(10), 4, 10)


# ---------------------------------------------------------------- batch sources

def test_token_windows_draw_what_get_batch_draws():
    data = torch.arange(100)
    source = TokenWindows(data, 8)
    x, y = source.batch(source.draw(4, torch.Generator().manual_seed(1)))
    gx, gy = get_batch(data, 4, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, gx) and torch.equal(y, gy) and len(source) == 100
    assert as_source(data, 8).seq_len == 8 and as_source(source, 8) is source
    with pytest.raises(SLMError, match="the val split has 8 tokens"):
        TokenWindows(data[:8], 8, "val")


def test_chat_examples_mask_the_prompt_and_the_padding():
    source = ChatExamples([([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10, 11, 12])], seq_len=5, pad_id=0)
    x, y = source.batch(torch.tensor([0, 1]))
    I = IGNORE_INDEX  # noqa: E741
    # prompt 1 2 3, reply 4 5: the targets 2 and 3 are
    # prompt tokens, the last two positions padding.
    assert x[0].tolist() == [1, 2, 3, 4, 0] and y[0].tolist() == [I, I, 4, 5, I]
    # prompt 6, reply 7..12: cut to seq_len + 1 = 6 tokens, every target a reply token.
    assert x[1].tolist() == [6, 7, 8, 9, 10] and y[1].tolist() == [7, 8, 9, 10, 11]
    picks = source.draw(50, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1} and len(source) == 5 + 7
    with pytest.raises(SLMError, match="example 0 of the train split"):
        ChatExamples([([1] * 6, [2])], seq_len=5, name="train")  # no room left for the reply
    with pytest.raises(SLMError, match="seq_len = 4"):
        as_source(source, 4)
