"""Lesson 13's task: deterministic for a seed, answers exact, train and test sets disjoint."""

import json
import re

import pytest
import torch

from slm_helpers.errors import SLMError
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.sampling import generate
from slm_helpers.tasks import (
    INSTRUCTION,
    TEST_PHRASINGS,
    TRAIN_PHRASINGS,
    greedy_matches,
    json_extraction,
)


def phrasing_of(example) -> str:
    """The template a sentence was written from (the one whose pattern matches it exactly)."""
    text = example.prompt.removeprefix(INSTRUCTION)
    found = [t for t in TRAIN_PHRASINGS + TEST_PHRASINGS
             if re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(t)), text)]
    assert len(found) == 1, (text, found)
    return found[0]


def test_the_same_seed_gives_the_same_examples():
    assert json_extraction(50, "train", seed=3) == json_extraction(50, "train", seed=3)
    assert json_extraction(50, "train", seed=3) != json_extraction(50, "train", seed=4)
    assert json_extraction(50, "train")[:10] == json_extraction(10, "train")  # a prefix, whatever n


def test_the_answer_is_the_json_of_fields_found_in_the_text():
    for example in json_extraction(200, "train") + json_extraction(200, "test"):
        assert example.prompt.startswith(INSTRUCTION)
        assert json.loads(example.answer) == example.fields
        assert list(example.fields) == ["name", "age", "city", "job"]
        text = example.prompt.removeprefix(INSTRUCTION)
        fields = example.fields
        first, age = fields["name"].split()[0], str(fields["age"])
        assert all(value in text for value in (first, age, fields["city"], fields["job"]))
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", text)  # the article fits the job


def every_word(example):
    return example.fields["name"].split() + [example.fields["city"]]


def test_train_and_test_share_no_name_city_or_phrasing():
    train, test = json_extraction(2000, "train"), json_extraction(500, "test")

    def parts(examples, key):
        return {part for e in examples for part in key(e)}

    for key in (lambda e: e.fields["name"].split()[:1], lambda e: e.fields["name"].split()[1:],
                lambda e: [e.fields["city"]], lambda e: [phrasing_of(e)]):
        seen, held_out = parts(train, key), parts(test, key)
        assert seen and held_out and not seen & held_out
    # nor across kinds: no training city Lund beside a test surname Lund
    assert not parts(train, every_word) & parts(test, every_word)
    assert {phrasing_of(e) for e in test} == set(TEST_PHRASINGS)  # every test phrasing is used
    assert len({e.prompt for e in test}) == len(test)  # no repeats to inflate a score


def test_bad_arguments():
    with pytest.raises(SLMError, match="split must be"):
        json_extraction(5, "validation")
    with pytest.raises(SLMError, match="integer >= 0"):
        json_extraction(-1)


class Letters:
    """A tokenizer stand-in: token i spells one letter, except where ``spelled`` says otherwise."""

    def __init__(self, spelled=None):
        self.spelled = spelled or {}

    def decode_bytes(self, ids):
        return b"".join(self.spelled.get(i, bytes([97 + i])) for i in ids)


def tiny_model_and_replies(n: int):
    """A random tiny model and ``n`` (prompt, reply) pairs where the reply is its greedy output up
    to a token it writes for the first time, at least its third (a chat's ``<|im_end|>``)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=26, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = GPT(config).eval()
    pairs = []
    while len(pairs) < n:
        length = 3 + 2 * len(pairs)  # prompts of different lengths share a padded batch
        prompt = torch.randint(1, 26, (1, length))
        reply = generate(model, prompt, 12, temperature=0)[0, length:].tolist()
        ends = [i for i, t in enumerate(reply) if i >= 2 and t not in reply[:i]]
        if ends:
            pairs.append((prompt[0].tolist(), reply[:ends[0] + 1]))
    return model, pairs


def test_greedy_matches_agrees_with_greedy_decoding():
    model, pairs = tiny_model_and_replies(3)
    wrong = [(p, r[:-1] + [(r[-1] + 1) % 26]) for p, r in pairs]  # the last token is not greedy
    first_wrong = [(p, [(r[0] + 1) % 26] + r[1:]) for p, r in pairs]
    verdicts = greedy_matches(model, Letters(), pairs + wrong + first_wrong, batch_size=4)
    assert verdicts == [True] * 3 + [False] * 6


def test_the_same_text_in_other_tokens_is_a_match():
    """Greedy decoding writes r0 r1 ...; a reply that spells r0 r1 as one token c is the same text
    (teacher forcing alone would call it a miss: c is not the greedy token)."""
    model, [(prompt, reply)] = tiny_model_and_replies(1)
    c = next(i for i in range(26) if i not in prompt + reply)
    joined = Letters({c: Letters().decode_bytes(reply[:2])})
    assert greedy_matches(model, joined, [(prompt, [c] + reply[2:])]) == [True]
    # the same tokens spelling another text are a miss
    other = Letters({c: b"zz"})
    assert greedy_matches(model, other, [(prompt, [c] + reply[2:])]) == [False]
