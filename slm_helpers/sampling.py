"""Turning a model's next-token logits into text: every decoding strategy of lesson 9.

One step of sampling is one pipeline, in this order (the order Hugging Face's ``generate`` uses)::

    logits -> repetition penalty -> / temperature -> top-k -> softmax -> top-p -> probabilities

``next_token_probs`` is that pipeline. On top of it:

- ``generate`` / ``token_stream`` sample token ids (temperature 0 is greedy decoding);
- ``beam_search`` searches for the most likely continuation instead of sampling one;
- ``stream`` and ``complete`` work with text: a prompt in, text out (piece by piece, or whole),
  with stop sequences, a seed for repeatable samples, and every option above.

Generation uses the model's KV cache when it has one (``GPT.new_cache``): see ``generate``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .errors import SLMError
from .utils import eval_mode


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x, least: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


@dataclass(frozen=True)
class SamplingOptions:
    """Every setting of decoding in one value, checked once when it is made: a bad one is a
    one-line SLMError then, not at the first generated token. The defaults sample from the
    model's own distribution. ``stop`` may be given as one string or several."""

    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None  # sample among the k most likely tokens; None: no limit
    # sample from the smallest set with this much probability; None: no limit
    top_p: float | None = None
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely; 1 is off
    num_beams: int = 1  # > 1: beam search instead of sampling
    # beam search ranks finished text by log-probability / length ** this
    length_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # generation ends before the first of these strings

    def __post_init__(self):
        if not _is_number(self.temperature) or self.temperature < 0:
            raise SLMError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and not _is_count(self.top_k, 1):
            raise SLMError(f"top_k must be at least 1 (or None for no limit), got {self.top_k}")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise SLMError(f"top_p must be in (0, 1] (or None for no limit), got {self.top_p}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise SLMError(f"repetition_penalty must be > 0 (1 means off, 1.2 is a common choice), "
                           f"got {self.repetition_penalty}")
        if not _is_count(self.num_beams, 1):
            raise SLMError("num_beams must be at least 1 (1 means no beam search), got "
                           f"{self.num_beams}")
        if not _is_number(self.length_penalty):
            raise SLMError("length_penalty must be a finite number (0 = off, > 0 favours longer "
                           f"text), got {self.length_penalty}")
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop,
                                                                       str) else tuple(self.stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise SLMError(f"stop sequences must be non-empty strings, got {s!r}")
        object.__setattr__(self, "stop", stop)  # frozen: the one place it is set


def sampling_options(options: SamplingOptions | None = None, **settings) -> SamplingOptions:
    """``options`` as it is, or SamplingOptions made from keyword ``settings`` (the notebooks'
    way)."""
    if options is not None:
        if settings:
            raise SLMError("pass options=SamplingOptions(...) or keyword settings, not both "
                           f"({', '.join(settings)})")
        return options
    try:
        return SamplingOptions(**settings)
    except TypeError:
        known = ", ".join(f.name for f in fields(SamplingOptions))
        unknown = ", ".join(sorted(set(settings) - {f.name for f in fields(SamplingOptions)}))
        raise SLMError(f"unknown sampling option(s) {unknown}; known: {known}") from None


def check_length(max_new_tokens) -> None:
    if not _is_count(max_new_tokens, 0):
        raise SLMError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


# ---------------------------------------------------------------- one step: logits -> probabilities

def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor | None,
                             penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019): make every token that occurs in ``previous``
    less likely. Its logit is divided by ``penalty`` if positive and multiplied by it if negative
    (dividing a negative logit would *raise* it). Each token counts once, however often it occurred.

    ``logits`` is (..., V) and ``previous`` (..., T) holds token ids with the same leading shape.
    """
    if penalty == 1 or previous is None or previous.numel() == 0:
        return logits
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


def next_token_probs(logits: torch.Tensor, options: SamplingOptions | None = None, *,
                     previous: torch.Tensor | None = None, **settings) -> torch.Tensor:
    """The distribution a sampler draws from, given logits of shape (B, V).

    ``repetition_penalty`` applies to the tokens in ``previous`` (B, T), the sequence so far.
    Temperature 0 puts all mass on the most likely token (greedy); a ``top_k`` larger than the
    vocabulary keeps every token; ``top_p`` keeps the smallest set of most likely tokens whose
    mass reaches ``top_p`` (always at least one). Settings: ``SamplingOptions``, or its fields as
    keywords.
    """
    o = sampling_options(options, **settings)
    logits = apply_repetition_penalty(logits.float(), previous, o.repetition_penalty)
    if o.temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    logits = logits / o.temperature
    # k beyond the vocabulary keeps every token
    if o.top_k is not None and o.top_k < logits.size(-1):
        kth = torch.topk(logits, o.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if o.top_p is not None and o.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # a token stays if the ones above it fall short
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= o.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


# ----------------------------------------------------------------
# feeding the model, with a KV cache

class _NextLogits:
    """Logits of the token after each row of a growing batch of sequences, using the model's KV
    cache when it has one (``model.new_cache``), so each step runs the model on the new token only.

    Position embeddings are absolute: once the context is full, the window slides, every position
    shifts, and every cached key and value is stale. The window then restarts from the last
    ``keep`` tokens and grows again up to ``block_size``. ``keep = block_size`` (the default) slides
    it by one token per step, the usual crop to the last ``block_size`` tokens, which costs the
    cache a full pass per token from then on; a smaller ``keep`` restarts it only every
    ``block_size - keep + 1`` tokens, but the model then sees between ``keep`` and ``block_size``
    tokens of context instead of always ``block_size``. The rule is the same with and without the
    cache, so the cache changes the speed, never the tokens.

    # New (lesson 11): a RoPE model (``model.reads_past_context``) never restarts, so it refuses a
    ``keep``. Its cache drops the oldest keys and every token attends to the ``block_size`` before
    it (sliding-window attention). Without the cache the model reruns on the last
    ``n_layer * (block_size - 1) + 1`` tokens, all that the last token's logits can depend on
    through ``n_layer`` windows, and gives the same logits.
    """

    def __init__(self, model, use_cache: bool = True, keep: int | None = None,
                 reserve: int | None = None):
        self.model = model
        # positions a cache allocates at first: the prompt and the tokens to come
        self.reserve = reserve
        self.block_size = model.block_size
        self.use_cache = use_cache and hasattr(model, "new_cache")
        # A RoPE model's window slides by itself and never restarts: a keep would be silently
        # ignored, so it is refused instead.
        if keep is not None and getattr(model, "reads_past_context", False):
            raise SLMError(f"keep={keep!r} applies to learned positions only: this model (RoPE) "
                           "slides its window one token at a time; leave keep unset")
        self.keep = self.block_size if keep is None else keep
        if not (isinstance(self.keep, int) and 1 <= self.keep <= self.block_size):
            raise SLMError("keep must be between 1 and the model's block_size "
                           f"({self.block_size}), got {keep!r}")
        self.start = None  # where the window the model sees begins
        self.cache = None
        self.fed = 0  # how many tokens of each sequence the cache has seen

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.size(1)
        if getattr(self.model, "reads_past_context", False):
            return self._sliding(idx)
        # first call, or the window is full
        if self.start is None or length - self.start > self.block_size:
            self.start = max(0, length - (self.block_size if self.start is None else self.keep))
            if self.use_cache:
                self.cache, self.fed = self.model.new_cache(idx.size(0), self.reserve), self.start
        if not self.use_cache:
            return self.model(idx[:, self.start:], only_last=True)[0][:, -1]
        # Only what the cache has not seen goes in; only the last position's logits come out.
        logits = self.model(idx[:, self.fed:], cache=self.cache, only_last=True)[0][:, -1]
        self.fed = length
        return logits

    def _sliding(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.use_cache:
            reach = self.model.config.n_layer * (self.block_size - 1) + 1
            return self.model(idx[:, -reach:], only_last=True)[0][:, -1]
        if self.cache is None:
            self.cache = self.model.new_cache(idx.size(0), self.reserve)
        logits = self.model(idx[:, self.fed:], cache=self.cache, only_last=True)[0][:, -1]
        self.fed = idx.size(1)
        return logits

    def reorder(self, index: torch.Tensor) -> None:
        for layer_cache in self.cache or []:
            layer_cache.reorder(index)


# ---------------------------------------------------------------- sampling token ids

def token_stream(model, idx: torch.Tensor, max_new_tokens: int,
                 options: SamplingOptions | None = None, *,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 keep: int | None = None,
                 **settings) -> Iterator[torch.Tensor]:
    """Yield the next token of each row of ``idx`` (B, T) as a (B, 1) tensor, one step at a time.

    The settings are those of ``generate``; they are checked now, not at the first step.
    """
    check_length(max_new_tokens)
    next_logits = _NextLogits(model, use_cache, keep, reserve=idx.size(1) + max_new_tokens)
    return _token_stream(model, idx, max_new_tokens, next_logits, generator,
                         sampling_options(options, **settings))


@torch.no_grad()
def _token_stream(model, idx, max_new_tokens, next_logits, generator, options):
    with eval_mode(model):  # no dropout while generating
        for _ in range(max_new_tokens):
            previous = idx if options.repetition_penalty != 1 else None
            probs = next_token_probs(next_logits(idx), options, previous=previous)
            if options.temperature == 0:
                next_id = probs.argmax(-1, keepdim=True)
            else:  # drawn on the CPU, so a seed gives the same sample on every device
                next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
            idx = torch.cat([idx, next_id], dim=1)
            yield next_id


def generate(model, idx: torch.Tensor, max_new_tokens: int, options: SamplingOptions | None = None,
             *,
             generator: torch.Generator | None = None, use_cache: bool = True,
             keep: int | None = None,
             **settings) -> torch.Tensor:
    """Extend each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens.

    Settings: ``SamplingOptions`` or its fields as keywords (temperature, top_k, top_p,
    repetition_penalty). A model with learned positions sees at most its last
    ``model.block_size`` tokens: a longer sequence is cropped from the left, as the model cannot see
    further back anyway, and ``keep`` sets where the window restarts once it is full (default
    ``block_size``: the plain crop; see ``_NextLogits``). A RoPE model
    (``model.reads_past_context``) sees further back: each token attends to the ``block_size``
    before it, so through ``n_layer`` layers the last token reads up to
    ``n_layer * (block_size - 1) + 1`` tokens; its window never restarts, and a ``keep`` raises
    SLMError. With ``use_cache`` (and a model that has a KV cache) the model runs on
    one new token per step instead of the whole window; the tokens are the same as without it.
    """
    new = list(token_stream(model, idx, max_new_tokens, options, generator=generator,
                            use_cache=use_cache,
                            keep=keep, **settings))
    return torch.cat([idx, *new], dim=1)


# ---------------------------------------------------------------- beam search

def length_normalised(score: float, length: int, length_penalty: float) -> float:
    """A finished beam's rank: its sum of log-probabilities divided by ``length ** length_penalty``.

    This is the form of Hugging Face's ``transformers`` (not GNMT's ``((5 + length) / 6) **
    alpha``), with ``length`` the number of new tokens. Log-probabilities are negative, so longer
    text scores lower; 0 leaves that as it is, 1 compares average log-probabilities per token, and
    larger values favour longer text still.
    """
    return score / length ** length_penalty


@torch.no_grad()
def beam_search(model, idx: torch.Tensor, max_new_tokens: int,
                options: SamplingOptions | None = None, *,
                is_finished: Callable[[torch.Tensor], bool] | None = None, use_cache: bool = True,
                keep: int | None = None, **settings) -> tuple[torch.Tensor, float]:
    """The continuation of ``idx`` (1, T) that beam search finds: (ids of shape (1, T + n), score).

    Keep the ``num_beams`` most likely partial continuations; at every step extend each by every
    token and keep the ``num_beams`` best of all those candidates. A beam is finished when
    ``is_finished(new_ids)`` says so (for example: a stop sequence appeared) or after
    ``max_new_tokens``; finished beams compete on ``length_normalised`` scores. Scores are sums of
    the model's own log-probabilities, after the repetition penalty only, as Hugging Face scores
    beams when it does not sample: temperature, top-k and top-p shape what a sampler draws from and
    play no part here. One beam is greedy decoding. Settings: ``SamplingOptions`` or its fields as
    keywords; ``num_beams`` defaults to 4 here.
    """
    check_length(max_new_tokens)
    if options is None:
        settings.setdefault("num_beams", 4)
    options = sampling_options(options, **settings)
    num_beams, length_penalty = options.num_beams, options.length_penalty
    if idx.dim() != 2 or idx.size(0) != 1:
        raise SLMError(f"beam search continues one sequence at a time: idx must have shape (1, T), "
                       f"got {tuple(idx.shape)}")
    T = idx.size(1)
    next_logits = _NextLogits(model, use_cache, keep)
    beams, scores = idx, [0.0]  # the live beams (n, T + step) and their sums of log-probabilities
    finished: list[tuple[float, torch.Tensor]] = []  # (normalised score, ids), best first
    with eval_mode(model):
        for step in range(1, max_new_tokens + 1):
            previous = beams if options.repetition_penalty != 1 else None
            logits = apply_repetition_penalty(next_logits(beams).float(), previous,
                                              options.repetition_penalty)
            logprobs = F.log_softmax(logits, dim=-1)  # (beams, V)
            candidates = (torch.tensor(scores, device=logprobs.device)[:,
                                                                       None] + logprobs).flatten()
            # 2 * num_beams candidates: even if num_beams of them finish, num_beams stay alive
            top = candidates.topk(min(2 * num_beams, candidates.numel()))
            parents, tokens, scores = [], [], []
            for score, flat in zip(top.values.tolist(), top.indices.tolist()):
                if score == -math.inf or len(parents) == num_beams:
                    break
                parent, token = divmod(flat, logprobs.size(-1))
                if is_finished is not None and is_finished(torch.cat([beams[parent, T:],
                                                                      idx.new_tensor([token])])):
                    finished.append((length_normalised(score, step, length_penalty),
                                     torch.cat([beams[parent], idx.new_tensor([token])])))
                else:
                    parents.append(parent)
                    tokens.append(token)
                    scores.append(score)
            finished = sorted(finished, key=lambda f: f[0], reverse=True)[:num_beams]
            if not parents:
                break
            index = torch.tensor(parents, device=idx.device)
            beams = torch.cat([beams[index], idx.new_tensor(tokens)[:, None]], dim=1)
            next_logits.reorder(index)
            # Stop early once no live beam can beat the worst of num_beams finished ones: sums of
            # log-probabilities only fall, so the best a beam can reach is its score now, divided
            # by the largest length it may reach (length_penalty > 0) or its length now (otherwise).
            reach = max_new_tokens if length_penalty > 0 else step
            if len(finished) == num_beams and finished[-1][0] >= length_normalised(max(scores),
                                                                                   reach,
                                                                                   length_penalty):
                break
        # live beams at full length finish too
        if beams.size(1) - T == max_new_tokens and max_new_tokens > 0:
            finished += [(length_normalised(s, max_new_tokens, length_penalty), b) for s,
                         b in zip(scores, beams)]
    if not finished:
        return idx, 0.0
    best_score, best = max(finished, key=lambda f: f[0])
    return best[None], best_score


# ---------------------------------------------------------------- text in, text out

def _stop_at(text: str, stop: tuple[str, ...]) -> int | None:
    """Where the first stop sequence in ``text`` begins, or None."""
    hits = [i for i in (text.find(s) for s in stop) if i != -1]
    return min(hits) if hits else None


def _unfinished_tail(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` must wait: the start of a stop sequence that may
    still complete, or a character whose bytes have not all arrived (byte-level BPE decodes those as
    U+FFFD)."""
    tail = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), tail, -1):
            if text.endswith(s[:k]):
                tail = k
                break
    return tail


def prompt_ids(model, tokenizer, prompt: str) -> torch.Tensor:
    """The prompt's token ids, shape (1, T), on the model's device."""
    device = next(model.parameters()).device
    if not isinstance(prompt, str):
        raise SLMError(f"the prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt or "\n")  # an empty prompt starts the model at a line break
    return torch.tensor([ids], dtype=torch.long, device=device)


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 200,
           options: SamplingOptions | None = None, *,
           seed: int | None = None, use_cache: bool = True, keep: int | None = None,
           **settings) -> Iterator[str]:
    """Yield the continuation of ``prompt``, piece by piece as the model writes it.

    Settings: ``SamplingOptions`` or its fields as keywords. Generation ends after
    ``max_new_tokens`` tokens, or as soon as the continuation contains a ``stop`` sequence; the text
    is cut just before it (the stop sequence is not yielded, nor is the start of one that might
    still complete). ``seed`` makes a sample repeatable. ``num_beams > 1`` runs beam search
    (``length_penalty``: see ``length_normalised``), which only knows its answer at the end, so it
    yields it in one piece. Bad settings raise SLMError now, not at the first piece.
    """
    options = sampling_options(options, **settings)
    check_length(max_new_tokens)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise SLMError("seed must be an integer (or None for a fresh sample each time), got "
                       f"{seed!r}")
    idx = prompt_ids(model, tokenizer, prompt)
    stop = options.stop
    if options.num_beams > 1:
        def is_finished(new_ids):
            return _stop_at(tokenizer.decode(new_ids.tolist()), stop) is not None

        ids, _ = beam_search(model, idx, max_new_tokens, options,
                             is_finished=is_finished if stop else None,
                             use_cache=use_cache, keep=keep)
        text = tokenizer.decode(ids[0, idx.size(1):].tolist())
        return iter([text[:_stop_at(text, stop)]] if text else [])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens = token_stream(model, idx, max_new_tokens, options, generator=generator,
                          use_cache=use_cache, keep=keep)
    return _text_pieces(tokens, tokenizer, stop)


def _text_pieces(tokens: Iterator[torch.Tensor], tokenizer, stop: tuple[str, ...]) -> Iterator[str]:
    new, sent, text = [], 0, ""
    # stopping early still ends the generator (and restores train mode)
    with contextlib.closing(tokens):
        for next_id in tokens:
            new.append(next_id.item())
            text = tokenizer.decode(new)  # the whole continuation: a token may be half a character
            cut = _stop_at(text, stop)
            if cut is not None:
                if cut > sent:
                    yield text[sent:cut]
                return
            ready = len(text) - _unfinished_tail(text, stop)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
    if len(text) > sent:
        yield text[sent:]


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 200,
             options: SamplingOptions | None = None,
             **settings) -> str:
    """The prompt followed by its continuation, as text. Takes everything ``stream`` takes: options
    or their fields as keywords (temperature, top_k, top_p, repetition_penalty, num_beams,
    length_penalty, stop), and seed, use_cache, keep."""
    return prompt + "".join(stream(model, tokenizer, prompt, max_new_tokens, options, **settings))
