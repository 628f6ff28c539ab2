"""The interactive sampler without a browser: set the controls, click, read the output area.

These run on ipywidgets 7.7 (Google Colab's) and 8.x alike.
"""

import pytest
import torch

from slm_helpers.model import GPT
from slm_helpers.sampling import complete
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.widgets import Sampler, next_token_distribution, plot_next_token_distribution, token_label

PNG = b"\x89PNG"


@pytest.fixture
def sampler(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    tokenizer = CharTokenizer(list("abcdefghij klmnopq\n!"))  # 20 characters, as the tiny model's vocabulary
    return Sampler(model, tokenizer, prompt="abc", max_new_tokens=12)


def text_of(output):
    return "".join(o["text"] for o in output.outputs)


def test_the_chart_is_drawn_at_once(sampler):
    assert bytes(sampler.chart.value).startswith(PNG)
    tokens = sampler.top_tokens()
    assert len(tokens) == 20 and sum(p for _, p in tokens) == pytest.approx(1.0, abs=1e-5)
    assert [p for _, p in tokens] == sorted((p for _, p in tokens), reverse=True)


def test_the_chart_follows_the_sliders(sampler):
    before = sampler.chart.value
    sampler.temperature.value = 0.0  # greedy: all the mass on one token
    assert sampler.chart.value != before
    assert sampler.top_tokens(2)[0][1] == 1.0 and sampler.top_tokens(2)[1][1] == 0.0
    sampler.temperature.value = 1.0
    sampler.top_k.value = 3
    assert sum(p > 0 for _, p in sampler.top_tokens()) == 3
    sampler.top_k.value = 0  # off
    sampler.top_p.value = 0.3
    kept = [p for _, p in sampler.top_tokens() if p > 0]
    assert 1 <= len(kept) < 20 and sum(kept) == pytest.approx(1.0, abs=1e-5)
    # the chart shows what the sampler would draw from
    own, probs = next_token_distribution(sampler.model, sampler.tokenizer, "abc", top_p=0.3)
    assert torch.allclose(probs, sampler.sampler)


def test_generate_writes_the_prompt_and_its_continuation(sampler):
    sampler.seed.value = 7
    sampler.button.click()
    first = text_of(sampler.output)
    assert first.startswith("abc") and len(first) == 3 + 12
    assert first == sampler.text
    assert first == complete(sampler.model, sampler.tokenizer, "abc", 12, seed=7, temperature=0.8)
    sampler.button.click()
    assert text_of(sampler.output) == first  # same seed, same text


def test_every_control_reaches_the_sampler(sampler):
    sampler.prompt.value = "hi"
    sampler.temperature.value = 0.0
    sampler.repetition_penalty.value = 1.5
    sampler.length.value = 5
    sampler.button.click()
    assert text_of(sampler.output) == complete(sampler.model, sampler.tokenizer, "hi", 5, temperature=0,
                                               repetition_penalty=1.5)
    sampler.temperature.value = 1.0
    sampler.num_beams.value = 3
    sampler.button.click()
    assert text_of(sampler.output) == complete(sampler.model, sampler.tokenizer, "hi", 5, num_beams=3,
                                               repetition_penalty=1.5)
    sampler.num_beams.value = 1
    sampler.seed.value = -1  # random: still runs


def test_the_default_seed_is_new_at_every_click_and_shown(sampler):
    assert sampler.seed.value == -1
    texts, seeds = set(), set()
    for _ in range(4):
        sampler.button.click()
        seed = int(sampler.seed_used.value.removeprefix("seed used: "))
        assert sampler.text == complete(sampler.model, sampler.tokenizer, "abc", 12, seed=seed, temperature=0.8)
        texts.add(sampler.text)
        seeds.add(seed)
    assert len(seeds) == 4 and len(texts) > 1  # a fresh sample per click, each one reproducible


def test_beam_search_greys_out_and_ignores_the_sampling_sliders(sampler):
    sampler.temperature.value, sampler.top_k.value, sampler.top_p.value = 0.3, 2, 0.5
    sampler.num_beams.value = 3
    assert sampler.temperature.disabled and sampler.top_k.disabled and sampler.top_p.disabled
    assert not sampler.repetition_penalty.disabled
    # The chart shows what beam search scores with: the model's own distribution.
    assert torch.allclose(sampler.sampler, sampler.own, atol=1e-6)
    sampler.button.click()
    assert sampler.text == complete(sampler.model, sampler.tokenizer, "abc", 12, num_beams=3)
    sampler.num_beams.value = 1
    assert not sampler.temperature.disabled


def test_bad_prompt_shows_one_line_error_instead_of_raising(sampler):
    sampler.prompt.value = "abc?"  # "?" is not in the vocabulary
    error = text_of(sampler.output)
    assert error.startswith("error: ") and "not in the vocabulary" in error and error.count("\n") == 1
    assert bytes(sampler.chart.value) == b""
    sampler.button.click()  # does not raise either
    assert text_of(sampler.output) == error
    sampler.prompt.value = "abc"  # fixed: the error goes, the chart comes back
    assert sampler.output.outputs == () and bytes(sampler.chart.value).startswith(PNG)


def test_static_picture_helpers(sampler):
    own, probs = next_token_distribution(sampler.model, sampler.tokenizer, "abc", temperature=0.5, top_k=5)
    ax = plot_next_token_distribution(own, probs, sampler.tokenizer, top=8)
    assert len(ax.get_xticklabels()) == 8
    assert token_label(sampler.tokenizer, sampler.tokenizer.encode(" ")[0]) == "\u2423"
    assert token_label(sampler.tokenizer, sampler.tokenizer.encode("\n")[0]) == "\u21b5"


def test_display_sends_the_panel(sampler, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw=False: shown.append((data, raw)))
    sampler._ipython_display_()
    (data, raw), = shown
    assert raw and data["application/vnd.jupyter.widget-view+json"]["model_id"] == sampler.ui.model_id
    assert data["text/plain"].startswith("Sampler panel")
