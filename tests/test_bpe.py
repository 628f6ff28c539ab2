"""Byte-level BPE: fast trainer == naive trainer, exact GPT-2 parity with tiktoken, export, errors."""

import hashlib
import json
import random
import socket
from pathlib import Path

import pytest
import tiktoken

from slm_helpers.errors import SLMError
from slm_helpers.tokenizers import (
    ENDOFTEXT,
    BPETokenizer,
    gpt2_encoding,
    gpt2_tokenizer,
    tokenizer_from_dict,
    train_merges,
    train_merges_naive,
)

DATA = Path(__file__).resolve().parents[1] / "data"
CORPORA = ["tinyshakespeare.txt", "origin_of_species.txt"]

STRESS = [
    "",
    "hello world",
    "Hello world",
    "héllo wörld, café, naïve, Ærøskøbing, Straße",
    "日本語の文章です。中文句子，还有标点！한국어 텍스트",
    "emoji 😀🎉 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽",
    "combining e\u0301 a\u0308\u0301 Z\u0335\u0321\u0347a\u0336lgo",
    "spaces   between    words\t\ttabs\tand\nnewlines\n\n\nend",
    "trailing spaces   ",
    "trailing newline\n",
    "trailing mix  \n \r\n",
    "   leading spaces",
    "\n\n\n",
    " ",
    "odd whitespace \x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2000\u2028\u2029\u3000 end",
    "digits 1234567890 3.14159 1,000,000 2024-01-01 ٣٤٥ ૧૨",
    "don't 've 'LL I'M we'd they're it's 's 'S 'T 'Re O'Neill rock'n'roll",
    "punctuation!!! ??? ... --- *** ### $$$ (a) [b] {c} <d> \"quoted\" 'single'",
    "code: def f(x):\n    return x**2  # comment\n",
    "mixed 漢字and English😀mixed123abc",
    "\ufeffBOM at the start",
    "null\x00byte and \x7f delete",
]


def _read(name):
    return (DATA / name).read_text(encoding="utf-8")


def _random_texts(n=200, seed=0):
    """Random strings drawn from many scripts, spaces, digits and apostrophes."""
    rng = random.Random(seed)
    pools = ["abcXYZ", " ", "  \n\t", "0123456789", "'", "éüßñ", "中文日本", "😀🎉", "\u0301", ".,!?-", "<|>"]
    return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


@pytest.fixture(scope="module")
def shakespeare_bpe():
    return BPETokenizer.train(_read("tinyshakespeare.txt"), vocab_size=1024)


# ----- training -----------------------------------------------------------------------------


def test_fast_trainer_matches_naive_trainer():
    text = _read("tinyshakespeare.txt")[:20_000] + " 日本語 😀 don't  \n"
    fast = train_merges(text, 150)
    assert fast == train_merges_naive(text, 150)
    assert len(fast) == 150 and len(set(fast)) == 150


def test_fast_trainer_matches_naive_with_special_tokens():
    lines = _read("tinyshakespeare.txt")[:5000].split("\n")
    text = "<|sep|>".join(lines[:60]) + ENDOFTEXT + "<|sep|>".join(lines[60:])
    specials = [ENDOFTEXT, "<|sep|>"]
    merges = train_merges(text, 60, special_tokens=specials)
    assert merges == train_merges_naive(text, 60, special_tokens=specials)
    assert (ord("|"), ord(">")) not in merges  # the special strings are not training text


def test_tie_break_is_smallest_pair():
    # pairs (' ', 'c') (a, b) (c, d) all occur twice; the smallest pair of ids wins
    merges = train_merges("ab ab cd cd", 1)
    assert merges == [(ord(" "), ord("c"))] == train_merges_naive("ab ab cd cd", 1)


def test_trained_vocab_size_and_special_ids(shakespeare_bpe):
    tok = shakespeare_bpe
    assert tok.vocab_size == 1024
    assert len(tok.merges) == 1024 - 256 - 1
    assert tok.special_tokens == {ENDOFTEXT: 1023}
    assert tok.vocab[256] == b" t"  # the most frequent pair of Shakespeare: space + 't' ("the", "to", ...)
    ids = tok.encode(_read("tinyshakespeare.txt"))
    assert max(ids) < 1023  # the special token never comes out of ordinary text
    assert len(ids) < 0.45 * len(_read("tinyshakespeare.txt"))  # it compresses


def test_user_special_tokens_never_merged_into():
    lines = _read("tinyshakespeare.txt")[:4000].split("\n")
    text = "".join(f"{line}<|user|>{line.upper()}<|endoftext|>" for line in lines)
    tok = BPETokenizer.train(text, 300, special_tokens=[ENDOFTEXT, "<|user|>"])
    assert tok.special_tokens == {ENDOFTEXT: 298, "<|user|>": 299}
    assert all(b"<|" not in tok.vocab[i] and b"|>" not in tok.vocab[i] for i in range(256, 298))
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(299) == len(lines) == ids.count(298)
    assert tok.decode(ids) == text
    assert tok.to_tiktoken().encode(text, allowed_special="all") == ids


# ----- GPT-2 parity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPORA)
def test_gpt2_parity_full_corpus(gpt2, enc, name):
    text = _read(name)
    ids = gpt2.encode(text)
    assert ids == enc.encode(text)
    assert gpt2.decode(ids) == text


def test_gpt2_parity_stress_set(gpt2, enc):
    for text in STRESS + _random_texts():
        ids = gpt2.encode(text, disallowed_special=())
        assert ids == enc.encode(text, disallowed_special=()), repr(text)
        assert gpt2.decode(ids) == text, repr(text)


def test_gpt2_known_ids(gpt2, enc):
    assert gpt2.vocab_size == enc.n_vocab == 50257
    assert gpt2.encode("Hello world") == enc.encode("Hello world") == [15496, 995]
    assert gpt2.decode([0]) == "!"  # GPT-2's id 0 is the byte '!', not byte 0


def test_gpt2_partial_utf8_decodes_like_tiktoken(gpt2, enc):
    ids = gpt2.encode("😀")
    assert len(ids) > 1  # one emoji, several byte tokens
    for i in ids:
        assert gpt2.decode_bytes([i]) == enc.decode_single_token_bytes(i)
        assert gpt2.decode([i]) == enc.decode([i])


def test_gpt2_special_token_like_tiktoken(gpt2, enc):
    text = "end of one<|endoftext|>start of two"
    assert gpt2.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={ENDOFTEXT}) == enc.encode(text, allowed_special={ENDOFTEXT})
    assert 50256 in gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    assert 50256 not in gpt2.encode(text, disallowed_special=())
    with pytest.raises(ValueError):
        enc.encode(text)
    with pytest.raises(SLMError, match="allowed_special"):
        gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


def test_gpt2_encoding_loads_offline(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    gpt2_encoding.cache_clear()
    enc = gpt2_encoding()
    assert enc.encode("Hello world") == [15496, 995]
    assert not (tmp_path / "empty-cache").exists()  # nothing copied into tiktoken's cache

    # tiktoken.get_encoding("gpt2") itself, offline, from a cache seeded with the shipped files
    cache = tmp_path / "seeded-cache"
    cache.mkdir()
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in ("vocab.bpe", "encoder.json"):
        key = hashlib.sha1((base + name).encode()).hexdigest()
        (cache / key).write_bytes((DATA / "gpt2" / name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # force a fresh load
    ref = tiktoken.get_encoding("gpt2")
    assert ref._pat_str == enc._pat_str
    assert ref._mergeable_ranks == enc._mergeable_ranks
    assert ref._special_tokens == enc._special_tokens and ref.n_vocab == enc.n_vocab
    sample = _read("tinyshakespeare.txt")[:20_000] + "".join(STRESS)
    assert ref.encode(sample, disallowed_special=()) == enc.encode(sample, disallowed_special=())


def test_corrupted_gpt2_file_is_reported(monkeypatch, tmp_path):
    # SLM_DATA_DIR is searched before the shipped data/ folder, so this broken copy is the one found.
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "vocab.bpe").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    with pytest.raises(SLMError, match="sha256"):
        gpt2_tokenizer()


# ----- export to tiktoken -------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPORA)
def test_to_tiktoken_same_ids(shakespeare_bpe, name):
    exported = shakespeare_bpe.to_tiktoken()
    text = _read(name)
    ids = shakespeare_bpe.encode(text)
    assert exported.encode(text) == ids
    assert exported.n_vocab == shakespeare_bpe.vocab_size
    assert shakespeare_bpe.decode(ids) == text


def test_to_tiktoken_stress_set(shakespeare_bpe):
    exported = shakespeare_bpe.to_tiktoken()
    for text in STRESS + _random_texts(seed=1):
        ids = shakespeare_bpe.encode(text, allowed_special="all")
        assert exported.encode(text, allowed_special="all") == ids, repr(text)
        assert shakespeare_bpe.decode(ids) == exported.decode(ids) == text, repr(text)


def test_gpt2_to_tiktoken_matches_gpt2_encoding(gpt2, enc):
    exported = gpt2.to_tiktoken()
    assert exported._mergeable_ranks == enc._mergeable_ranks
    assert exported._special_tokens == enc._special_tokens


def test_to_tiktoken_refuses_duplicate_tokens():
    # "abc" made twice: (ab, c) and (a, bc); tiktoken keys tokens by their bytes
    tok = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])
    assert tok.vocab[257] == tok.vocab[259] == b"abc"
    with pytest.raises(SLMError, match="tiktoken"):
        tok.to_tiktoken()


# ----- persistence --------------------------------------------------------------------------


def test_save_load_round_trip(shakespeare_bpe, tmp_path):
    path = tmp_path / "bpe.json"
    shakespeare_bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == shakespeare_bpe.merges
    assert loaded.special_tokens == shakespeare_bpe.special_tokens
    assert loaded.pattern == shakespeare_bpe.pattern and loaded.vocab == shakespeare_bpe.vocab
    text = _read("tinyshakespeare.txt")[:5000]
    assert loaded.encode(text) == shakespeare_bpe.encode(text)
    # readable: plain JSON, one merge per line, tokens as text
    raw = path.read_text(encoding="utf-8")
    saved = json.loads(raw)
    assert saved["type"] == "bpe" and len(saved["merges"]) == 767
    assert saved["vocab"]["256"] == shakespeare_bpe.vocab[256].decode()
    a, b = saved["merges"][0]
    assert f"\n    [{a}, {b}],\n" in raw
    assert " the" in saved["vocab"].values()


def test_gpt2_save_load_and_from_dict(gpt2, tmp_path):
    path = tmp_path / "gpt2.json"
    gpt2.save(path)
    loaded = BPETokenizer.load(path)
    again = tokenizer_from_dict(json.loads(json.dumps(gpt2.to_dict())))  # as stored in a checkpoint
    text = "Byte order matters: GPT-2's id 0 is '!'. 日本 😀"
    assert loaded.encode(text) == again.encode(text) == gpt2.encode(text)
    assert loaded.byte_order == again.byte_order == gpt2.byte_order != list(range(256))


def test_decode_accepts_tensors(shakespeare_bpe):
    torch = pytest.importorskip("torch")
    ids = shakespeare_bpe.encode("To be, or not to be")
    assert shakespeare_bpe.decode(torch.tensor(ids)) == "To be, or not to be"
    assert shakespeare_bpe.decode(torch.tensor(ids[0])) == "To"


# ----- errors -------------------------------------------------------------------------------


def test_training_errors():
    with pytest.raises(SLMError, match="vocab_size"):
        BPETokenizer.train("some text", 200)
    with pytest.raises(SLMError, match="vocab_size"):
        BPETokenizer.train("some text", 256)  # 256 bytes + <|endoftext|> need 257
    with pytest.raises(SLMError, match="empty"):
        BPETokenizer.train("", 300)
    with pytest.raises(SLMError, match="only allows"):
        BPETokenizer.train("ab ab", 300)
    with pytest.raises(SLMError, match="only allows"):
        train_merges_naive("ab ab", 10)
    with pytest.raises(SLMError, match="str"):
        BPETokenizer.train(b"bytes", 300)
    with pytest.raises(SLMError, match="special tokens"):
        BPETokenizer.train("some text", 300, special_tokens=[""])
    tok = BPETokenizer.train("aaab", 256, special_tokens=())  # no merges, no specials: bytes only
    assert tok.vocab_size == 256 and tok.encode("aaab") == [97, 97, 97, 98]


def test_decode_errors(shakespeare_bpe):
    for bad in ([1024], [-1], [5, 99999], [None], [3.5]):
        with pytest.raises(SLMError, match="not in the vocabulary"):
            shakespeare_bpe.decode(bad)


def test_encode_errors(shakespeare_bpe):
    with pytest.raises(SLMError, match="special token '<\\|endoftext\\|>'"):
        shakespeare_bpe.encode("a<|endoftext|>b")
    with pytest.raises(SLMError, match="not special tokens"):
        shakespeare_bpe.encode("a", allowed_special={"<|nope|>"})
    with pytest.raises(SLMError, match="str"):
        shakespeare_bpe.encode(["not", "text"])


def test_bad_saved_tokenizers(tmp_path):
    with pytest.raises(SLMError, match="not found"):
        BPETokenizer.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(SLMError, match="not valid JSON"):
        BPETokenizer.load(tmp_path / "broken.json")
    with pytest.raises(SLMError, match="bpe"):
        BPETokenizer.from_dict({"type": "char", "chars": ["a"]})
    with pytest.raises(SLMError, match="pairs"):
        BPETokenizer.from_dict({"type": "bpe", "merges": [[97, 98, 99]]})
    with pytest.raises(SLMError, match="do not exist yet"):
        BPETokenizer([(97, 300)])
    with pytest.raises(SLMError, match="twice"):
        BPETokenizer([(97, 98), (97, 98)])
    with pytest.raises(SLMError, match="special"):
        BPETokenizer([(97, 98)], {ENDOFTEXT: 100})
    with pytest.raises(SLMError, match="byte_order"):
        BPETokenizer([], byte_order=[0] * 256)
    with pytest.raises(SLMError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "wordpiece"})
