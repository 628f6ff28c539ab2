"""Interactive panels: lesson 9's sampler (type a prompt, move the sliders, watch the next-token
distribution change, and generate) and lesson 12's chat (talk to an instruct model, stop a reply).

    from slm_helpers.widgets import ChatWidget, Sampler
    Sampler(model, tokenizer, prompt="ROMEO:")   # the last line of a cell shows it
    ChatWidget(model, tokenizer)                  # model, tokenizer = load_pretrained()

They work with ipywidgets 7.7 (Google Colab) and 8.x, so they use only what both have: ``Textarea``,
``FloatSlider``, ``IntSlider``, ``IntText``, ``Button``, ``Label``, ``Image``, ``Output``,
``HBox``/``VBox``, ``observe`` and ``on_click``. Output is written by setting ``Output.outputs``
rather than with ``with output:``, which needs a running kernel (and, from a thread, writes wherever
the kernel is busy); so the same code runs in a notebook, in a test and in the chat's reply thread.
"""

from __future__ import annotations

import contextlib
import html
import io
import random
import threading

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from .chat import Chat
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


def next_token_distribution(model, tokenizer, prompt: str, options: SamplingOptions | None = None,
                            *,
                            logits=None, **settings):
    """The model's own next-token probabilities after ``prompt`` and the sampler's (after the
    options: temperature, top_k, top_p, repetition_penalty), both of shape (V,).
    Pass ``logits`` = ``prompt_logits(...)`` to skip running the model again."""
    ids, logits = logits if logits is not None else prompt_logits(model, tokenizer, prompt)
    own = torch.softmax(logits.float(), dim=-1)[0].cpu()
    sampler = next_token_probs(logits, sampling_options(options, **settings), previous=ids)[0].cpu()
    return own, sampler


def plot_next_token_distribution(own: torch.Tensor, sampler: torch.Tensor, tokenizer, *,
                                 top: int = 20,
                                 ax=None, title: str | None = None):
    """Bars of the ``top`` most likely tokens: the model's own probability (grey) and the sampler's
    (blue)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    # ties (zeros) ranked by the model
    order = torch.argsort(sampler + 1e-6 * own, descending=True)[:top]
    x = list(range(len(order)))
    ax.bar(x, own[order].tolist(), color="lightgrey", label="model")
    ax.bar(x, sampler[order].tolist(), width=0.5, color="tab:blue", label="sampler")
    ax.set_xticks(x)
    ax.set_xticklabels([token_label(tokenizer, int(i)) for i in order])
    ax.set_ylim(0,
                min(1.02, 1.15 * max(own[order].max().item(), sampler[order].max().item(), 0.05)))
    ax.set_ylabel("probability")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return ax


class _Panel:
    """What the sampler and the chat share: the sampling sliders, the options they stand for, and
    how the panel is shown. A subclass sets ``ui`` (the box to show) and ``panel_name``."""

    panel_name = "Panel"
    ui: widgets.Box

    def _add_sampling_sliders(self, vocab_size: int, max_new_tokens: int, *, temperature: float,
                              top_p: float,
                              max_length: int = 1000) -> list[widgets.Widget]:
        """Make the ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty`` and ``length``
        sliders."""
        wide = {"description_width": "initial"}
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                               style=wide,
                                               description="temperature (0 = greedy)")
        self.top_k = widgets.IntSlider(value=0, min=0, max=min(vocab_size, 100), style=wide,
                                       description="top-k (0 = off)")
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, style=wide,
                                         description="top-p (1 = off)")
        self.repetition_penalty = widgets.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.05,
                                                      style=wide,
                                                      description="repetition penalty (1 = off)")
        self.length = widgets.IntSlider(value=min(max_new_tokens, max_length), min=1,
                                        max=max_length, style=wide,
                                        description="new tokens")
        return [self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.length]

    def _sampling_options(self) -> SamplingOptions:
        """The options the sliders stand for (0 for top-k and 1 for top-p mean "off")."""
        return SamplingOptions(temperature=self.temperature.value, top_k=self.top_k.value or None,
                               top_p=self.top_p.value if self.top_p.value < 1 else None,
                               repetition_penalty=self.repetition_penalty.value)

    def _ipython_display_(self):
        """Show the panel (the same message in ipywidgets 7 and 8); where no kernel runs it, for
        example a notebook viewed on GitHub, the text says what it is instead of a widget's repr."""
        from IPython.display import display

        display({"text/plain": f"{self.panel_name} panel: run the notebook in Jupyter or Colab to "
                               "use it",
                 "application/vnd.jupyter.widget-view+json": {"version_major": 2,
                                                              "version_minor": 0,
                                                              "model_id": self.ui.model_id}},
                raw=True)


class Sampler(_Panel):
    """Sliders for every sampling option, a Generate button, the text, and the next-token
    distribution.

    Each control is an attribute (``prompt``, ``temperature``, ``top_k``, ``top_p``,
    ``repetition_penalty``, ``length``, ``num_beams``, ``seed``, ``button``), so code can set
    them and call ``button.click()``. The chart follows the prompt and the sliders as they move.
    Bad input (a character the tokenizer does not know) shows a one-line error in ``output``.
    """

    panel_name = "Sampler"

    def __init__(self, model, tokenizer, prompt: str = "\n", *, max_new_tokens: int = 200,
                 top: int = 20):
        self.model, self.tokenizer, self.top = model, tokenizer, top
        wide = {"description_width": "initial"}
        self.prompt = widgets.Textarea(value=prompt, description="prompt", rows=3, style=wide,
                                       layout=widgets.Layout(width="98%"))
        sliders = self._add_sampling_sliders(tokenizer.vocab_size, max_new_tokens, temperature=0.8,
                                             top_p=1.0)
        self.num_beams = widgets.IntSlider(value=1, min=1, max=8, style=wide,
                                           description="beams (1 = sample)")
        self.seed = widgets.IntText(value=-1, description="seed (-1 = a new one each time)",
                                    style=wide)
        self.seed_used = widgets.Label(value="")  # the seed of the last text, to get it again
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.chart = widgets.Image(format="png")
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid lightgrey",
                                                           width="98%"))
        self.text = ""  # the last generated text
        self.own = self.sampler = None  # the distributions the chart shows
        # (prompt, its ids and logits): moving a slider need not re-run the model
        self._cached = (None, None)

        for control in (self.prompt, self.temperature, self.top_k, self.top_p,
                        self.repetition_penalty,
                        self.num_beams):
            control.observe(self.update_chart, names="value")
        self.num_beams.observe(self._grey_out_for_beams, names="value")
        self.button.on_click(self.generate)
        controls = widgets.VBox([*sliders, self.num_beams, self.seed, self.button, self.seed_used])
        self.ui = widgets.VBox([self.prompt, widgets.HBox([controls, self.chart]), self.output])
        self.update_chart()

    # ----- reading the controls

    def options(self) -> SamplingOptions:
        """The sampling options the controls stand for (0 for top-k and 1 for top-p mean "off").

        Beam search scores with the model's own probabilities (after the repetition penalty only),
        so with more than one beam the temperature, top-k and top-p sliders are greyed out and
        ignored."""
        if self.num_beams.value > 1:
            return SamplingOptions(repetition_penalty=self.repetition_penalty.value,
                                   num_beams=self.num_beams.value)
        return self._sampling_options()

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
            own, sampler = next_token_distribution(self.model, self.tokenizer, prompt,
                                                   self.options(),
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
                                     title="next token: the model's probabilities, and the "
                                           "sampler's")
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

        The seed field's -1 draws a new seed at every click; the one used is shown under the
        button."""
        seed = self.seed.value if self.seed.value >= 0 else random.randrange(2**31)
        self.seed_used.value = (f"seed used: {seed}" if self.num_beams.value == 1
                                else "beam search: no seed needed")
        try:
            pieces = stream(self.model, self.tokenizer, self.prompt.value, self.length.value,
                            self.options(), seed=seed)
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
        self.output.outputs = ({"output_type": "stream", "name": "stderr",
                                "text": f"error: {err}\n"},)


def _one_line(err: Exception) -> str:
    """An error as one line: the course's own errors as they are, others with their type."""
    lines = str(err).strip().splitlines()
    if isinstance(err, SLMError):
        return lines[0] if lines else "SLMError"
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


class ChatWidget(_Panel):
    """A chat with an instruct model (lesson 12): a message box, Send, Stop and New chat buttons,
    the conversation, and the sampler's sliders (no chart: each reply is many tokens).

    >>> panel = ChatWidget(model, tokenizer)      # model, tokenizer = load_pretrained()
    >>> panel.send("What is the capital of France?", wait=True)
    'The capital of France is Paris.'

    The reply is written in a background thread, piece by piece: a button's callback runs only when
    the kernel is free, so a reply written in the callback itself could not be stopped. The thread
    checks the Stop flag after each piece it writes (a token, or a few when a character's bytes span
    tokens); a stopped reply stays in the chat as far as it got. While a reply is
    being written, Send is refused (the message stays in the box). An error, in the thread or before
    it starts (a chat longer than the model's context, say), shows as one line under the
    conversation.

    Controls: ``message``, ``send_button``, ``stop_button``, ``reset_button`` and the sliders
    ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``length`` (new tokens at most).
    The defaults, temperature 0.2 and top-p 0.9, are SmolLM2's recommendation. ``chat`` is the
    ``Chat`` underneath (its ``history``); ``reply_thread`` the thread writing the current or last
    reply.
    """

    panel_name = "Chat"
    names = {"system": "System", "user": "You", "assistant": "Assistant"}
    colours = {"system": "#777777", "user": "#1f5fa8", "assistant": "#2e7d32"}
    busy_message = "a reply is still being written: wait for it, or press Stop"

    def __init__(self, model, tokenizer, system: str | None = None, *, max_new_tokens: int = 256,
                 temperature: float = 0.2, top_p: float = 0.9):
        self.chat = Chat(model, tokenizer, system=system)  # no ChatML template: one line, now
        self.model, self.tokenizer = model, tokenizer
        self.message = widgets.Textarea(placeholder="Type a message, then press Send", rows=2,
                                        layout=widgets.Layout(width="98%"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", disabled=True)
        self.reset_button = widgets.Button(description="New chat")
        self.status = widgets.Label(value="")
        self.output = widgets.Output(layout=widgets.Layout(border="1px solid lightgrey",
                                                           width="98%"))
        sliders = self._add_sampling_sliders(tokenizer.vocab_size, max_new_tokens,
                                             temperature=temperature,
                                             top_p=top_p, max_length=min(1000, model.block_size))
        self.reply_thread: threading.Thread | None = None
        self.error: str | None = None  # the error shown under the conversation, if any
        self._stop = threading.Event()
        self._busy = False
        # [message, reply so far] while a reply is being written
        self._pending: list[str] | None = None

        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        buttons = widgets.HBox([self.send_button, self.stop_button, self.reset_button, self.status])
        self.ui = widgets.VBox([self.output, self.message, buttons, widgets.VBox(sliders)])
        self._render()

    @property
    def history(self) -> list[dict[str, str]]:
        return self.chat.history

    @property
    def busy(self) -> bool:
        """Whether a reply is being written."""
        return self._busy

    # ----- the buttons

    def send(self, message: str | None = None, *, wait: bool = False) -> str | None:
        """Send ``message`` (default: the message box's text) and write the reply in a thread; with
        ``wait``, wait for it and return it. Returns None when nothing was sent: an empty message,
        an error (shown in the panel), or a reply still being written."""
        if self._busy:
            self.status.value = self.busy_message
            return None
        text = (self.message.value if message is None else message).strip()
        if not text:
            return None
        try:
            pieces = self.chat.send(text, self._sampling_options(),
                                    max_new_tokens=self.length.value)
        # e.g. the chat no longer fits in the context: the message stays in the box
        except SLMError as err:
            self._render(error=err)
            return None
        if message is None:
            self.message.value = ""
        self._stop.clear()
        self._busy, self._pending = True, [text, ""]
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "writing…"
        self._render()
        self.reply_thread = threading.Thread(target=self._write_reply, args=(pieces,),
                                             name="chat reply", daemon=True)
        self.reply_thread.start()
        if wait:
            self.reply_thread.join()
            return self.chat.history[-1]["content"]
        return None

    def stop(self, *, wait: bool = False) -> None:
        """Stop the reply being written after its next piece (with ``wait``, wait until it has
        stopped)."""
        self._stop.set()
        if wait and self.reply_thread is not None:
            self.reply_thread.join()

    def reset(self) -> None:
        """Start a new chat (stopping a reply first; a system message given at the start stays)."""
        self.stop(wait=True)
        self.chat.reset()
        self.status.value = ""
        self._render()

    # ----- the reply thread

    def _write_reply(self, pieces) -> None:
        error = None
        try:
            # closing it records the reply, whole or stopped, in the history
            with contextlib.closing(pieces):
                for piece in pieces:
                    self._pending[1] += piece
                    self._render()
                    if self._stop.is_set():
                        break
        except Exception as err:  # shown in the panel: an exception in a thread is otherwise lost
            error = err
        finally:
            stopped = self._stop.is_set() and error is None
            self._pending = None
            self.send_button.disabled, self.stop_button.disabled = False, True
            self.status.value = "stopped: the reply so far stays in the chat" if stopped else ""
            self._render(error=error)
            # last: a new reply's thread must not start before this one has drawn its end
            self._busy = False

    # ----- the conversation

    def _turn(self, role: str, content: str) -> dict:
        name = self.names[role]
        body = (f'<div style="margin: 0.3em 0"><b style="color: {self.colours[role]}">{name}:</b> '
                f'<span style="white-space: pre-wrap">{html.escape(content)}</span></div>')
        return {"output_type": "display_data", "metadata": {},
                "data": {"text/plain": f"{name}: {content}", "text/html": body}}

    def _render(self, error: Exception | None = None) -> None:
        """Show the history, the reply being written, and ``error`` (one line) if any."""
        messages = list(self.chat.history)
        if self._pending is not None:
            messages += [{"role": "user", "content": self._pending[0]},
                         {"role": "assistant", "content": self._pending[1]}]
        outputs = [self._turn(m["role"], m["content"]) for m in messages]
        self.error = None if error is None else f"error: {_one_line(error)}"
        if self.error:
            outputs.append({"output_type": "stream", "name": "stderr", "text": self.error + "\n"})
        self.output.outputs = tuple(outputs)

    def transcript(self) -> str:
        """The conversation as the panel shows it, as text: one "Name: content" block per turn."""
        return "\n".join(o["data"]["text/plain"] for o in self.output.outputs
                         if o["output_type"] == "display_data")
