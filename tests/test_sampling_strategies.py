"""Every decoding strategy of slm_helpers.sampling against a small example computed by hand.

The fake models here have logits we set: ``TableModel`` is a bigram whose next-token
probabilities are a table, ``ScriptModel`` writes a fixed text, whatever came before.
"""

import math

import pytest
import torch

from slm_helpers.errors import SLMError
from slm_helpers.sampling import (
    SamplingOptions,
    apply_repetition_penalty,
    beam_search,
    check_length,
    complete,
    generate,
    length_normalised,
    next_token_probs,
    stream,
)
from slm_helpers.tokenizers import BPETokenizer, CharTokenizer


class TableModel(torch.nn.Module):
    """P(next | last token) = table[last]: a bigram with the probabilities we choose."""

    block_size = 16

    def __init__(self, table):
        super().__init__()
        self.register_buffer("log_table", torch.tensor(table, dtype=torch.float).log())
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the samplers can find the device

    def forward(self, idx, targets=None, *, only_last=False):
        return self.log_table[idx[:, -1:] if only_last else idx], None


class ScriptModel(torch.nn.Module):
    """Writes ``script`` token after token: at position t it is sure the next token is script[t +
    1]."""

    block_size = 64

    def __init__(self, script, vocab_size):
        super().__init__()
        self.script, self.vocab_size = list(script), vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, *, only_last=False):
        B, T = idx.shape
        logits = torch.full((B, T, self.vocab_size), -30.0)
        for t in range(T):
            logits[:, t, self.script[(t + 1) % len(self.script)]] = 30.0
        return logits[:, -1:] if only_last else logits, None


def probs_of(*p):
    return torch.tensor([p]).log()  # logits whose softmax is p, shape (1, V)


# ---------------------------------------------------------------- greedy and temperature

def test_temperature_zero_is_greedy():
    probs = next_token_probs(torch.tensor([[1.0, 3.0, 2.0]]), temperature=0)
    assert probs.tolist() == [[0.0, 1.0, 0.0]]


def test_temperature_scales_logits():
    logits = probs_of(1 / 7, 2 / 7, 4 / 7)
    assert torch.allclose(next_token_probs(logits), torch.tensor([[1 / 7, 2 / 7, 4 / 7]]))
    # T = 0.5 squares the probabilities before renormalising: 1, 4, 16 out of 21
    assert torch.allclose(next_token_probs(logits, temperature=0.5),
                          torch.tensor([[1, 4, 16]]) / 21)
    # T = 2 takes square roots: 1, sqrt(2), 2 out of 3 + sqrt(2)
    r2 = math.sqrt(2)
    assert torch.allclose(next_token_probs(logits, temperature=2),
                          torch.tensor([[1, r2, 2]]) / (3 + r2))


def test_greedy_generation_follows_the_most_likely_path():
    # bigram over 3 tokens: 0 -> 1 -> 2 -> 0 most likely
    model = TableModel([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    out = generate(model, torch.tensor([[0]]), 6, temperature=0)
    assert out.tolist() == [[0, 1, 2, 0, 1, 2, 0]]


def test_negative_temperature_is_an_error():
    with pytest.raises(SLMError, match="temperature must be >= 0"):
        next_token_probs(torch.zeros(1, 3), temperature=-0.5)


# ---------------------------------------------------------------- top-k and top-p

def test_top_k_keeps_the_k_most_likely():
    probs = next_token_probs(probs_of(0.1, 0.2, 0.3, 0.4), top_k=2)
    assert torch.allclose(probs, torch.tensor([[0, 0, 3 / 7, 4 / 7]]))


def test_top_k_larger_than_the_vocabulary_is_clamped():
    logits = probs_of(0.1, 0.2, 0.3, 0.4)
    assert torch.allclose(next_token_probs(logits, top_k=1000), next_token_probs(logits))


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = probs_of(0.5, 0.3, 0.15, 0.05)
    # mass of the tokens above each: 0, 0.5, 0.8, 0.95 -> a token stays while that is below p
    assert torch.allclose(next_token_probs(logits, top_p=0.7), torch.tensor([[0.625, 0.375, 0, 0]]))
    assert torch.allclose(next_token_probs(logits, top_p=0.5), torch.tensor([[1.0, 0, 0, 0]]))
    assert torch.allclose(next_token_probs(logits, top_p=0.81),
                          torch.tensor([[0.5, 0.3, 0.15, 0]]) / 0.95)
    assert torch.allclose(next_token_probs(logits, top_p=1.0),
                          torch.tensor([[0.5, 0.3, 0.15, 0.05]]))


def test_top_p_works_on_unsorted_vocabularies_and_after_top_k():
    logits = probs_of(0.15, 0.5, 0.05, 0.3)
    assert torch.allclose(next_token_probs(logits, top_p=0.7), torch.tensor([[0, 0.625, 0, 0.375]]))
    # top-k = 3 first (0.15, 0.5, 0.3 renormalised by
    # 0.95), then top-p = 0.6 keeps 0.5/0.95 and 0.3/0.95
    assert torch.allclose(next_token_probs(logits, top_k=3, top_p=0.6),
                          torch.tensor([[0, 0.625, 0, 0.375]]))


@pytest.mark.parametrize("top_p", [0, -0.1, 1.5])
def test_top_p_outside_0_1_is_an_error(top_p):
    with pytest.raises(SLMError, match="top_p must be in"):
        next_token_probs(torch.zeros(1, 3), top_p=top_p)


# ---------------------------------------------------------------- repetition penalty

def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    previous = torch.tensor([[0, 1, 1]])  # tokens 0 and 1 were seen (1 twice: it counts once)
    penalised = apply_repetition_penalty(logits, previous, 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    probs = next_token_probs(logits, repetition_penalty=2.0, previous=previous)
    assert torch.allclose(probs, torch.softmax(torch.tensor([[1.0, -2.0, 0.5, 3.0]]), -1))


def test_repetition_penalty_of_one_is_off_and_comes_before_greedy():
    logits, previous = torch.tensor([[3.0, 2.0]]), torch.tensor([[0]])
    assert torch.equal(apply_repetition_penalty(logits, previous, 1.0), logits)
    # 3 / 2 = 1.5 < 2: the penalty is applied first, so greedy now picks token 1
    assert next_token_probs(logits, temperature=0, repetition_penalty=2.0,
                            previous=previous).tolist() == [[0, 1]]


def test_repetition_penalty_steers_greedy_decoding_to_unseen_tokens():
    model = TableModel([[0.1, 0.6, 0.2, 0.1],
                        [0.2, 0.1, 0.6, 0.1],
                        [0.45, 0.35, 0.05, 0.15],
                        [0.25, 0.25, 0.25, 0.25]])
    # a loop
    assert generate(model, torch.tensor([[0]]), 3, temperature=0).tolist() == [[0, 1, 2, 0]]
    # With penalty 3, from token 2 having seen {0, 1, 2}: logs (-0.80, -1.05, -3.00, -1.90) become
    # (-2.40, -3.15, -8.99, -1.90) and the unseen token 3 wins. Steps 1 and 2 are unchanged:
    # from 0: (-6.91, -0.51, -1.61, -2.30) -> 1; from 1: (-4.83, -6.91, -0.51, -2.30) -> 2.
    out = generate(model, torch.tensor([[0]]), 3, temperature=0, repetition_penalty=3.0)
    assert out.tolist() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("penalty", [0, -1.0])
def test_repetition_penalty_must_be_positive(penalty):
    with pytest.raises(SLMError, match="repetition_penalty must be > 0"):
        next_token_probs(torch.zeros(1, 3), repetition_penalty=penalty)


# ---------------------------------------------------------------- beam search and length penalty

# Tokens: x (the prompt), a, b, and "." (a stop sequence in some tests).
CHARS = ["x", "a", "b", "."]
BEAM_TABLE = [
    [0.0, 0.50, 0.40, 0.10],  # after x
    [0.0, 0.40, 0.30, 0.30],  # after a
    [0.0, 0.05, 0.05, 0.90],  # after b
    [0.0, 1 / 3, 1 / 3, 1 / 3],  # after .
]


def test_beam_search_finds_what_greedy_misses():
    model, x = TableModel(BEAM_TABLE), torch.tensor([[0]])
    # greedy takes a (0.5), then a (0.4): 0.20 in all
    assert generate(model, x, 2, temperature=0).tolist() == [[0, 1, 1]]
    # two beams keep b (0.4) alive, and b then . is 0.4 * 0.9 = 0.36
    ids, score = beam_search(model, x, 2, num_beams=2, length_penalty=0.0)
    assert ids.tolist() == [[0, 2, 3]]
    assert score == pytest.approx(math.log(0.36))
    # one beam is greedy decoding
    ids, score = beam_search(model, x, 2, num_beams=1, length_penalty=0.0)
    assert ids.tolist() == [[0, 1, 1]] and score == pytest.approx(math.log(0.2))


def test_length_normalised_is_score_over_length_to_the_alpha():
    assert length_normalised(-6.0, 3, 0.0) == -6.0
    assert length_normalised(-6.0, 3, 1.0) == -2.0
    assert length_normalised(-6.0, 4, 0.5) == -3.0


# After x: "." 0.4 ends at once; a 0.35 then a, a (0.9 each) runs to the length limit.
STOP_TABLE = [
    [0.0, 0.35, 0.25, 0.40],
    [0.0, 0.90, 0.05, 0.05],
    [0.0, 0.50, 0.40, 0.10],
    [0.0, 1 / 3, 1 / 3, 1 / 3],
]


def test_length_penalty_decides_between_short_and_long_beams():
    # Worked by hand, 2 beams, at most 3 new tokens, "." finishes a beam:
    #   step 1: "." (0.4) finishes; a (0.35) and b (0.25) live on
    #   step 2: aa 0.315, ba 0.125 live on (nothing finishes among the best)
    #   step 3: aaa 0.2835, baa 0.1125 reach the limit and finish
    # length_penalty 0: "." wins, log 0.4 = -0.92 beats log 0.2835 = -1.26
    # length_penalty 1: "aaa" wins, -1.26 / 3 = -0.42 beats -0.92 / 1
    model, tokenizer = TableModel(STOP_TABLE), CharTokenizer(CHARS)
    is_finished = lambda new: tokenizer.decode(new.tolist()).endswith(".")  # noqa: E731
    ids, score = beam_search(model, torch.tensor([[0]]), 3, num_beams=2, length_penalty=0.0,
                             is_finished=is_finished)
    assert tokenizer.decode(ids[0].tolist()) == "x." and score == pytest.approx(math.log(0.4))
    ids, score = beam_search(model, torch.tensor([[0]]), 3, num_beams=2, length_penalty=1.0,
                             is_finished=is_finished)
    assert (tokenizer.decode(ids[0].tolist()) == "xaaa"
            and score == pytest.approx(math.log(0.35 * 0.81) / 3))
    # the same through complete: the stop sequence is cut from the text
    assert complete(model, tokenizer, "x", 3, num_beams=2, length_penalty=0.0, stop=".") == "x"
    assert complete(model, tokenizer, "x", 3, num_beams=2, length_penalty=1.0, stop=".") == "xaaa"


def test_beam_search_takes_one_sequence():
    with pytest.raises(SLMError, match=r"shape \(1, T\)"):
        beam_search(TableModel(BEAM_TABLE), torch.tensor([[0], [1]]), 2)


# ---------------------------------------------------------------- stop sequences, length, streaming

@pytest.fixture
def alphabet():
    """A model that writes abcdefgh over and over, and its tokenizer."""
    chars = list("abcdefgh")
    return ScriptModel(range(8), 8), CharTokenizer(chars)


def test_max_new_tokens(alphabet):
    model, tokenizer = alphabet
    assert complete(model, tokenizer, "a", 5, temperature=0) == "abcdef"
    assert complete(model, tokenizer, "a", 0) == "a"
    with pytest.raises(SLMError, match="max_new_tokens must be >= 0"):
        complete(model, tokenizer, "a", -1)


def test_stop_sequences_cut_the_text_before_them(alphabet):
    model, tokenizer = alphabet
    assert complete(model, tokenizer, "a", 20, temperature=0, stop="de") == "abc"
    # the earliest one
    assert complete(model, tokenizer, "a", 20, temperature=0, stop=["fg", "cd"]) == "ab"
    # the prompt does not count: only the continuation is searched
    assert complete(model, tokenizer, "ab", 20, temperature=0, stop=["ab"]) == "abcdefgh"
    assert complete(model, tokenizer, "a", 5, temperature=0, stop="xyz") == "abcdef"  # never met


def test_stream_yields_each_new_piece(alphabet):
    model, tokenizer = alphabet
    assert list(stream(model, tokenizer, "a", 5, temperature=0)) == ["b", "c", "d", "e", "f"]
    # "c" might start the stop sequence "ce", so it waits until "d" shows it does not
    assert list(stream(model, tokenizer, "a", 5, temperature=0, stop="ce")) == ["b", "cd", "e", "f"]
    assert list(stream(model, tokenizer, "a", 20, temperature=0, stop="cd")) == ["b"]


def test_stream_never_splits_a_character_across_tokens():
    tokenizer = BPETokenizer([], {})  # ids are bytes: "é" is two tokens
    script = list("aé!".encode("utf-8"))  # a, 0xC3, 0xA9, !
    model = ScriptModel(script, 256)
    assert list(stream(model, tokenizer, "a", 3, temperature=0)) == ["é", "!"]


def test_bad_options_fail_before_generating(alphabet):
    model, tokenizer = alphabet
    with pytest.raises(SLMError, match="stop sequences must be non-empty"):
        stream(model, tokenizer, "a", 5, stop=[""])
    with pytest.raises(SLMError, match="not in the vocabulary"):
        stream(model, tokenizer, "a?", 5)


# ---------------------------------------------------------------- seeds and every strategy at once

def test_seed_makes_samples_repeatable():
    # every token equally likely: samples differ by chance only
    model = TableModel([[0.25] * 4] * 4)
    tokenizer = CharTokenizer(list("abcd"))
    first = complete(model, tokenizer, "a", 40, seed=1)
    assert complete(model, tokenizer, "a", 40, seed=1) == first
    assert complete(model, tokenizer, "a", 40, seed=2) != first


@pytest.mark.parametrize("options", [
    dict(temperature=0),
    dict(temperature=0.7),
    dict(top_k=2),
    dict(top_p=0.9),
    dict(repetition_penalty=1.3),
    dict(num_beams=3, length_penalty=0.6),
    dict(stop=["\n"]),
    dict(temperature=0.9, top_k=3, top_p=0.95, repetition_penalty=1.2, stop="aa", use_cache=False),
])
def test_complete_supports_every_strategy(options):
    model = TableModel(BEAM_TABLE)
    out = complete(model, CharTokenizer(CHARS), "x", 6, seed=0, **options)
    assert out.startswith("x") and len(out) <= 7 and set(out) <= set(CHARS)


@pytest.mark.parametrize("options, message", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be at least 1"),
    (dict(top_p=1.01), "top_p must be in"),
    (dict(max_new_tokens=-3), "max_new_tokens must be >= 0"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
    (dict(num_beams=0), "num_beams must be at least 1"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(stop=["ok", 3]), "stop sequences must be non-empty strings"),
])
def test_bad_options_give_one_line_errors_when_made(options, message):
    with pytest.raises(SLMError, match=message) as err:
        if "max_new_tokens" in options:
            check_length(options["max_new_tokens"])
        else:
            SamplingOptions(**options)
    assert "\n" not in str(err.value)


def test_options_are_one_frozen_value_and_keywords_still_work():
    options = SamplingOptions(temperature=0.5, top_k=3, stop="\n")
    assert options.stop == ("\n",)  # one string or several, stored as a tuple
    with pytest.raises(Exception):
        options.temperature = 2.0  # frozen: checked once, never changed after
    logits = torch.tensor([[0.1, 2.0, 1.0, -1.0]])
    assert torch.equal(next_token_probs(logits, options),
                       next_token_probs(logits, temperature=0.5, top_k=3))
    with pytest.raises(SLMError, match="not both"):
        next_token_probs(logits, options, top_k=2)
    with pytest.raises(SLMError, match="unknown sampling option.*temprature"):
        next_token_probs(logits, temprature=0.5)


# ---------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random GPT saved as a checkpoint, with a character vocabulary that has a line
    break."""
    from slm_helpers.checkpoint import save_checkpoint
    from slm_helpers.model import GPT, GPTConfig

    torch.manual_seed(0)
    tokenizer = CharTokenizer(list("\n abcdefghijklmnopq"))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2,
                          n_embd=16))
    path = tmp_path_factory.mktemp("cli") / "tiny.pt"
    save_checkpoint({"model": model.state_dict(), "model_config": model.config.to_dict(),
                     "tokenizer": tokenizer.to_dict(), "step": 0}, path)
    return path, model.eval(), tokenizer


def cli(capsys, checkpoint, *argv):
    from slm_helpers.cli import main

    rc = main(["sample", "--checkpoint", str(checkpoint[0]), "--device", "cpu", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_sample_strategies_match_complete(checkpoint, capsys):
    _, model, tokenizer = checkpoint
    cases = [
        (["--temperature", "0"], dict(temperature=0)),
        (["--seed", "3", "--repetition-penalty", "1.3", "--top-k", "5"],
         dict(seed=3, temperature=0.8, repetition_penalty=1.3, top_k=5)),
        (["--num-beams", "3", "--length-penalty", "0.5"], dict(num_beams=3, length_penalty=0.5)),
        (["--num-beams", "2", "--temperature", "0.7"], dict(num_beams=2, temperature=0.7)),
    ]
    for argv, options in cases:
        rc, out, err = cli(capsys, checkpoint, "--prompt", "ab", "--max-new-tokens", "20", *argv)
        assert rc == 0 and err == ""
        assert out == complete(model, tokenizer, "ab", 20, **options) + "\n", argv


def test_cli_stream_prints_the_same_text(checkpoint, capsys):
    argv = ["--prompt", "ab", "--max-new-tokens", "30", "--seed", "1"]
    assert cli(capsys, checkpoint, *argv, "--stream")[1] == cli(capsys, checkpoint, *argv)[1]
    assert cli(capsys, checkpoint, *argv, "--no-cache")[1] == cli(capsys, checkpoint, *argv)[1]


def test_cli_stop_sequences(checkpoint, capsys):
    _, model, tokenizer = checkpoint
    greedy = complete(model, tokenizer, "ab", 30, temperature=0)[2:]
    stop = greedy[4:6]
    rc, out, _ = cli(capsys, checkpoint, "--prompt", "ab", "--max-new-tokens", "30",
                     "--temperature", "0",
                     "--stop", "zz", "--stop", stop)
    assert rc == 0 and out == "ab" + greedy[:greedy.find(stop)] + "\n"
    # "\n" typed in a shell arrives as backslash + n: the CLI reads it as a line break
    rc, out, _ = cli(capsys, checkpoint, "--max-new-tokens", "200", "--seed", "0", "--stop", "\\n",
                     "--stream")
    assert rc == 0 and "\n" not in out[:-1]


@pytest.mark.parametrize("option, value, message", [
    ("--repetition-penalty", "0", "repetition_penalty must be > 0"),
    ("--num-beams", "0", "num_beams must be at least 1"),
    ("--length-penalty", "nan", "length_penalty must be a finite number"),
    ("--stop", "", "stop sequences must be non-empty"),
    ("--temperature", "-0.1", "temperature must be >= 0"),
    ("--prompt", "a?", "not in the vocabulary"),
])
def test_cli_bad_sampling_options_are_one_line_errors(checkpoint, capsys, option, value, message):
    rc, out, err = cli(capsys, checkpoint, option, value)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_beam_search_scores_with_the_models_own_log_probabilities():
    """As Hugging Face does when not sampling: temperature, top-k and top-p play no part in beam
    search; the score of the best beam is the sum of the model's log-probabilities of its tokens."""
    model = TableModel(BEAM_TABLE)
    prompt = torch.tensor([[0]])
    plain, plain_score = beam_search(model, prompt, 3, num_beams=2, length_penalty=0)
    shaped, shaped_score = beam_search(model, prompt, 3, num_beams=2, length_penalty=0,
                                       temperature=0.3, top_k=1,
                                       top_p=0.2)
    assert torch.equal(plain, shaped) and shaped_score == pytest.approx(plain_score)
    table = torch.tensor(BEAM_TABLE)
    ids = plain[0].tolist()
    assert plain_score == pytest.approx(sum(math.log(table[a, b]) for a, b in zip(ids, ids[1:])),
                                        rel=1e-5)
