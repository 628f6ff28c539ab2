"""An interactive sampler (lesson 9): type a prompt, move the sliders, watch the next-token
distribution change, and generate.

    from slm_helpers.widgets import Sampler
    Sampler(model, tokenizer, prompt="ROMEO:")   # the last line of a cell shows it

It works with ipywidgets 7.7 (Google Colab) and 8.x, so it uses only what both have: ``Textarea``,
``FloatSlider``, ``IntSlider``, ``IntText``, ``Button``, ``Image``, ``Output``, ``HBox``/``VBox``,
``observe`` and ``on_click``. Output is written by setting ``Output.outputs`` rather than with
``with output:``, which needs a running kernel; so the same code runs in a notebook and in a test.
"""

from __future__ import annotations

import io
import random

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from .errors import SLMError
from .sampling import SamplingOptions, next_token_probs, prompt_ids, sampling_options, stream
from .utils import eval_mode


def token_label(tokenizer, token_id: int) -> str:
    """A token as a readable bar label: spaces and line breaks made visible."""
    text = tokenizer.decode([token_id])
    return text.replace(" ", "\u2423").replace("\n", "\u21b5") if text else repr(text)


@torch.no_grad()
def prompt_logits(model, tokenizer, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's token ids (1, T) and the model's logits for the token after it (1, V)."""
    ids = prompt_ids(model, tokenizer, prompt)
    with eval_mode(model):
        logits = model(ids[:, -model.block_size:], only_last=True)[0][:, -1]
    return ids, logits


def next_token_distribution(model, tokenizer, prompt: str, options: SamplingOptions | None = None, *,
                            logits=None, **settings):
    """The model's own next-token probabilities after ``prompt`` and the sampler's (after the
    options: temperature, top_k, top_p, repetition_penalty), both of shape (V,).
    Pass ``logits`` = ``prompt_logits(...)`` to skip running the model again."""
    ids, logits = logits if logits is not None else prompt_logits(model, tokenizer, prompt)
    own = torch.softmax(logits.float(), dim=-1)[0].cpu()
    sampler = next_token_probs(logits, sampling_options(options, **settings), previous=ids)[0].cpu()
    return own, sampler


def plot_next_token_distribution(own: torch.Tensor, sampler: torch.Tensor, tokenizer, *, top: int = 20,
                                 ax=None, title: str | None = None):
    """Bars of the ``top`` most likely tokens: the model's own probability (grey) and the sampler's (blue)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    order = torch.argsort(sampler + 1e-6 * own, descending=True)[:top]  # ties (zeros) ranked by the model
    x = list(range(len(order)))
    ax.bar(x, own[order].tolist(), color="lightgrey", label="model")
    ax.bar(x, sampler[order].tolist(), width=0.5, color="tab:blue", label="sampler")
    ax.set_xticks(x)
    ax.set_xticklabels([token_label(tokenizer, int(i)) for i in order])
    ax.set_ylim(0, min(1.02, 1.15 * max(own[order].max().item(), sampler[order].max().item(), 0.05)))
    ax.set_ylabel("probability")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return ax


class Sampler:
    """Sliders for every sampling option, a Generate button, the text, and the next-token distribution.

    Each control is an attribute (``prompt``, ``temperature``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``length``, ``num_beams``, ``seed``, ``button``), so code can set
    them and call ``button.click()``. The chart follows the prompt and the sliders as they move.
    Bad input (a character the tokenizer does not know) shows a one-line error in ``output``.
    """

    def __init__(self, model, tokenizer, prompt: str = "\n", *, max_new_tokens: int = 200, top: int = 20):
        self.model, self.tokenizer, self.top = model, tokenizer, top
        wide = {"description_width": "initial"}
        self.prompt = widgets.Textarea(value=prompt, description="prompt", rows=3, style=wide,
                                       layout=widgets.Layout(width="98%"))
        self.temperature = widgets.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, style=wide,
                                               description="temperature (0 = greedy)")
        self.top_k = widgets.IntSlider(value=0, min=0, max=min(tokenizer.vocab_size, 100), style=wide,
                                       description="top-k (0 = off)")
        self.top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, style=wide,
                                         description="top-p (1 = off)")
        self.repetition_penalty = widgets.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.05, style=wide,
                                                      description="repetition penalty (1 = off)")
        self.length = widgets.IntSlider(value=max_new_tokens, min=1, max=1000, style=wide,
                                        description="new tokens")
        self.num_beams = widgets.IntSlider(value=1, min=1, max=8, style=wide, description="beams (1 = sample)")
        self.seed = widgets.IntText(value=-1, description="seed (-1 = a new one each time)", style=wide)
        self.seed_used = widgets.Label(value="")  # the seed of the last text, to get it again
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.chart = widgets.Image(format="png")
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid lightgrey", width="98%"))
        self.text = ""  # the last generated text
        self.own = self.sampler = None  # the distributions the chart shows
        self._cached = (None, None)  # (prompt, its ids and logits): moving a slider need not re-run the model

        for control in (self.prompt, self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                        self.num_beams):
            control.observe(self.update_chart, names="value")
        self.num_beams.observe(self._grey_out_for_beams, names="value")
        self.button.on_click(self.generate)
        controls = widgets.VBox([self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                                 self.length, self.num_beams, self.seed, self.button, self.seed_used])
        self.ui = widgets.VBox([self.prompt, widgets.HBox([controls, self.chart]), self.output])
        self.update_chart()

    def _ipython_display_(self):
        """Show the panel (the same message in ipywidgets 7 and 8); where no kernel runs it, for
        example a notebook viewed on GitHub, the text says what it is instead of a widget's repr."""
        from IPython.display import display

        display({"text/plain": "Sampler panel: run the notebook in Jupyter or Colab to use it",
                 "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                              "model_id": self.ui.model_id}}, raw=True)

    # ----- reading the controls

    def options(self) -> SamplingOptions:
        """The sampling options the controls stand for (0 for top-k and 1 for top-p mean "off").

        Beam search scores with the model's own probabilities (after the repetition penalty only), so
        with more than one beam the temperature, top-k and top-p sliders are greyed out and ignored."""
        if self.num_beams.value > 1:
            return SamplingOptions(repetition_penalty=self.repetition_penalty.value, num_beams=self.num_beams.value)
        return SamplingOptions(temperature=self.temperature.value, top_k=self.top_k.value or None,
                               top_p=self.top_p.value if self.top_p.value < 1 else None,
                               repetition_penalty=self.repetition_penalty.value)

    def _grey_out_for_beams(self, change=None) -> None:
        for slider in (self.temperature, self.top_k, self.top_p):
            slider.disabled = self.num_beams.value > 1

    # ----- the chart

    def update_chart(self, change=None) -> None:
        """Redraw the next-token distribution for the current prompt and options."""
        try:
            prompt = self.prompt.value
            if self._cached[0] != prompt:
                self._cached = (prompt, prompt_logits(self.model, self.tokenizer, prompt))
            own, sampler = next_token_distribution(self.model, self.tokenizer, prompt, self.options(),
                                                   logits=self._cached[1])
        except SLMError as err:
            self.chart.value = b""
            self._show_error(err)
            return
        if self._showing_error:
            self.output.outputs = ()
        self.own, self.sampler = own, sampler
        fig, ax = plt.subplots(figsize=(7, 3))
        plot_next_token_distribution(own, sampler, self.tokenizer, top=self.top, ax=ax,
                                     title="next token: the model's probabilities, and the sampler's")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        self.chart.value = buffer.getvalue()

    def top_tokens(self, n: int | None = None) -> list[tuple[str, float]]:
        """The chart's bars as (token, sampler probability), most likely first."""
        probs, ids = self.sampler.topk(min(n or self.top, len(self.sampler)))
        return [(self.tokenizer.decode([int(i)]), float(p)) for p, i in zip(probs, ids)]

    # ----- generating

    def generate(self, _button=None) -> str:
        """Write a continuation of the prompt into the output area, piece by piece; returns it.

        The seed field's -1 draws a new seed at every click; the one used is shown under the button."""
        seed = self.seed.value if self.seed.value >= 0 else random.randrange(2**31)
        self.seed_used.value = f"seed used: {seed}" if self.num_beams.value == 1 else "beam search: no seed needed"
        try:
            pieces = stream(self.model, self.tokenizer, self.prompt.value, self.length.value, self.options(), seed=seed)
            text = self.prompt.value
            self._write(text)
            for piece in pieces:
                text += piece
                self._write(text)
        except SLMError as err:
            self._show_error(err)
            return ""
        self.text = text
        return text

    # ----- the output area

    @property
    def _showing_error(self) -> bool:
        outputs = self.output.outputs
        return len(outputs) == 1 and outputs[0].get("name") == "stderr"

    def _write(self, text: str) -> None:
        self.output.outputs = ({"output_type": "stream", "name": "stdout", "text": text},)

    def _show_error(self, err: Exception) -> None:
        self.output.outputs = ({"output_type": "stream", "name": "stderr", "text": f"error: {err}\n"},)
