"""Byte-level BPE: fast trainer == naive trainer, exact GPT-2 parity with tiktoken, export,
errors."""

import hashlib
import json
import random
import socket
import sys
from pathlib import Path

import pytest
import regex
import tiktoken

from slm_helpers.errors import SLMError
from slm_helpers.tokenizers import (
    DIGITS_SPLIT_PATTERN,
    ENDOFTEXT,
    BPETokenizer,
    byte_level_tokenizer,
    bytes_to_unicode,
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
    pools = ["abcXYZ", " ", "  \n\t", "0123456789", "'", "éüßñ", "中文日本", "😀🎉", "\u0301",
             ".,!?-", "<|>"]
    return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60)))
            for _ in range(n)]


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
    # the most frequent pair of Shakespeare: space + 't' ("the", "to", ...)
    assert tok.vocab[256] == b" t"
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
    assert gpt2.encode(text, allowed_special={ENDOFTEXT}) == enc.encode(text,
                                                                        allowed_special={ENDOFTEXT})
    assert 50256 in gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    assert 50256 not in gpt2.encode(text, disallowed_special=())
    with pytest.raises(ValueError):
        enc.encode(text)
    with pytest.raises(SLMError, match="allowed_special"):
        gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text


# GPT-2's split pattern as OpenAI's encoder.py wrote it
GPT2_ORIGINAL_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                         r"""|\s+(?!\S)|\s+""")


def test_gpt2_encoding_needs_no_blobfile(monkeypatch):
    """tiktoken 0.8 and 0.9 (0.8 is the course's floor) open a local path only with the optional
    blobfile package: gpt2_encoding must not need it."""
    import tiktoken.load

    def read_file_as_in_tiktoken_0_9(path):
        if not path.startswith(("http://", "https://")):
            raise ImportError("blobfile is not installed. Please install it by running `pip "
                              "install blobfile`.")
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(tiktoken.load, "read_file", read_file_as_in_tiktoken_0_9)
    monkeypatch.setitem(sys.modules, "blobfile", None)  # import blobfile: ImportError
    loader = tiktoken.load.read_file_cached
    gpt2_encoding.cache_clear()
    assert gpt2_encoding().encode("Hello world") == [15496, 995]
    assert tiktoken.load.read_file_cached is loader  # tiktoken as it was
    gpt2_encoding.cache_clear()


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
    # older tiktoken releases have GPT-2's own pattern, newer ones the same splits with possessive
    # quantifiers, as the course's (the encodings below must agree either way)
    assert ref._pat_str in (enc._pat_str, GPT2_ORIGINAL_PATTERN)
    assert ref._mergeable_ranks == enc._mergeable_ranks
    assert ref._special_tokens == enc._special_tokens and ref.n_vocab == enc.n_vocab
    sample = _read("tinyshakespeare.txt")[:20_000] + "".join(STRESS)
    assert ref.encode(sample, disallowed_special=()) == enc.encode(sample, disallowed_special=())


def test_corrupted_gpt2_file_is_reported(monkeypatch, tmp_path):
    # SLM_DATA_DIR is searched before the shipped data/
    # folder, so this broken copy is the one found.
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


# ----- released vocabularies (lesson 12): special tokens first, bytes left out ----------------


def test_first_id_puts_the_special_tokens_below_the_bytes():
    tok = BPETokenizer([(2 + 97, 2 + 98)], {"<s>": 0, "</s>": 1}, first_id=2)  # merge 0: "a" + "b"
    assert tok.vocab_size == 2 + 256 + 1 and tok.first_id == 2
    assert (tok.vocab[0] == b"<s>" and tok.vocab[2] == b"\x00" and tok.vocab[2 + 97] == b"a"
            and tok.vocab[258] == b"ab")
    assert tok.encode("abc") == [258, 2 + 99]
    assert tok.encode("<s>ab", allowed_special="all") == [0,
                                                          258] and tok.decode([0, 258,
                                                                               1]) == "<s>ab</s>"
    exported = tok.to_tiktoken()  # tiktoken takes ids that start after the special tokens too
    for text in STRESS + ["<s>ab</s>"]:
        assert (exported.encode(text, allowed_special="all")
                == tok.encode(text, allowed_special="all")), repr(text)
    with pytest.raises(SLMError,
                       match=r"merge 0 \(1, 99\) uses ids that do not exist yet \(2..257\)"):
        BPETokenizer([(1, 99)], first_id=2)  # id 1 is below the bytes: a special token's place
    with pytest.raises(SLMError, match="outside the byte and merge ids"):
        BPETokenizer([], {"<s>": 5}, first_id=2)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(SLMError, match="first_id must be a non-negative int"):
            BPETokenizer([], first_id=bad)


def test_a_byte_without_a_token_is_dropped():
    order = [b for b in range(256) if b not in (0, 7)]  # no token for the bytes 0 and 7
    tok = BPETokenizer([(order.index(45), order.index(45))], byte_order=order)  # merge 0: "-" + "-"
    dash, dashes = order.index(45), len(order)
    assert tok.vocab_size == 254 + 1 and tok.vocab[dashes] == b"--"
    # dropped inside its chunk, before merging, as Hugging
    # Face's BPE drops a character it has no token for
    assert (tok.encode("-\x00-") == tok.encode("--") == [dashes]
            and tok.encode("-\x07\x00-\x00-") == [dashes, dash])
    assert tok.encode("\x07") == [] and tok.encode("a\x07\x00") == tok.encode("a")
    assert tok.decode(tok.encode("null\x00byte")) == "nullbyte"


def test_first_id_and_byte_order_survive_save_and_load(tmp_path):
    # a scrambled order, two bytes left out
    order = sorted(set(range(256)) - {0, 255}, key=lambda b: (b * 37) % 256)
    merges = train_merges(_read("tinyshakespeare.txt")[:3000], 30)
    position = {b: 3 + i for i, b in enumerate(order)}
    moved = [(position.get(a, a - 256 + 3 + 254), position.get(b, b - 256 + 3 + 254)) for a,
             b in merges]
    tok = BPETokenizer(moved, {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
                       byte_order=order, first_id=3)
    path = tmp_path / "released.json"
    tok.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["first_id"] == 3 and saved["byte_order"] == order
    text = _read("tinyshakespeare.txt")[:4000] + "".join(STRESS)
    for again in (BPETokenizer.load(path),
                  tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))):
        assert (again.first_id, again.byte_order, again.merges) == (3, order, tok.merges)
        assert again.vocab == tok.vocab and again.special_tokens == tok.special_tokens
        assert again.encode(text, disallowed_special=()) == tok.encode(text, disallowed_special=())
    plain = BPETokenizer([(97, 98)]).to_dict()
    assert "first_id" not in plain and "byte_order" not in plain  # what older checkpoints hold


def test_to_tiktoken_refuses_a_tokenizer_without_every_byte():
    tok = BPETokenizer([], byte_order=[b for b in range(256) if b != 4])
    with pytest.raises(SLMError,
                       match="tiktoken needs a token for each of the 256 bytes and this tokenizer "
                             "has 255"):
        tok.to_tiktoken()


def _released_vocabulary(text, n_merges, specials=("<|endoftext|>", "<|im_start|>")):
    """(tokens, merges, merges as trained) in a released file's layout: special tokens first, then
    the 256 bytes in GPT-2's table order, then one token per merge, written through GPT-2's byte
    table."""
    table = bytes_to_unicode()
    trained = train_merges(text, n_merges)
    pieces = dict(table)
    for k, (a, b) in enumerate(trained):
        pieces[256 + k] = pieces[a] + pieces[b]
    tokens = [*specials, *sorted(table.values()), *(pieces[256 + k] for k in range(n_merges))]
    return tokens, [f"{pieces[a]} {pieces[b]}" for a, b in trained], trained


def test_byte_level_tokenizer_reads_a_released_layout():
    text = _read("tinyshakespeare.txt")[:5000]
    tokens, merges, trained = _released_vocabulary(text, 60)
    tok = byte_level_tokenizer(tokens, merges, {"<|endoftext|>": 0, "<|im_start|>": 1})
    assert tok.first_id == 2 and tok.vocab_size == len(tokens)
    assert tok.byte_order == sorted(range(256),
                                    key=bytes_to_unicode().get) == gpt2_tokenizer().byte_order
    # the same merges in the course's own layout: bytes 0-255, merge k = 256 + k
    plain = BPETokenizer(trained)
    ours = {b: 2 + tok.byte_order.index(b) for b in range(256)} | {256 + k: 258 + k
                                                                   for k in range(60)}
    for sample in (text, *STRESS):
        assert tok.encode(sample) == [ours[i] for i in plain.encode(sample)], repr(sample)


def test_byte_level_tokenizer_refuses_what_a_bpe_tokenizer_cannot_hold():
    tokens, merges, _ = _released_vocabulary(_read("tinyshakespeare.txt")[:5000], 20)
    specials = {"<|endoftext|>": 0, "<|im_start|>": 1}
    # the last two merges' tokens at each other's ids
    swapped = tokens[:-2] + [tokens[-1], tokens[-2]]
    with pytest.raises(SLMError,
                       match=r"merge 18 \(.*\) makes id 277, but a BPETokenizer numbers merge k "
                             r"258 \+ k "
                                       "= 276: this vocabulary is not in merge order"):
        byte_level_tokenizer(swapped, merges, specials)
    with pytest.raises(SLMError, match="not in merge order"):
        # the merges listed out of order
        byte_level_tokenizer(tokens, merges[1:] + merges[:1], specials)
    apart = tokens[:100] + [tokens[-1]] + tokens[100:-1]  # a merged token among the bytes
    with pytest.raises(SLMError,
                       match="one-byte tokens of this vocabulary are not at consecutive ids"):
        byte_level_tokenizer(apart, merges[:-1], specials)
    # a one-character token outside the table
    foreign = [("€" if token == "ÿ" else token) for token in tokens]
    with pytest.raises(SLMError, match="token '€' is not written through GPT-2's byte table"):
        byte_level_tokenizer(foreign, merges, specials)
    with pytest.raises(SLMError,
                       match="has 277 ordinary tokens but 256 bytes and 20 merges make 276"):
        byte_level_tokenizer(tokens + ["ĠĠĠ"], merges, specials)


@pytest.mark.parametrize("texts", ["stress", "random"])
def test_digits_split_pattern_cuts_as_hugging_faces_digits_then_byte_level(texts):
    """SmolLM2's tokenizer.json runs two pre-tokenizers, Digits then ByteLevel (GPT-2's split); the
    one regex DIGITS_SPLIT_PATTERN must give the very same pieces."""
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers",
                                         reason="the tokenizers package is not installed")
    smollm2 = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                use_regex=True)])
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    split = regex.compile(DIGITS_SPLIT_PATTERN)
    samples = STRESS + ["a  1", "x \n 22", "  3", "1 ", "   \t12\n\n3  a", "x1y 2z", "٣ ૧ 1"]
    for text in samples if texts == "stress" else _random_texts(400, seed=2):
        expected = [bytes(decoder[ch] for ch in piece) for piece,
                    _ in smollm2.pre_tokenize_str(text)]
        assert [chunk.encode("utf-8") for chunk in split.findall(text)] == expected, repr(text)
