"""Chatting with an instruction-tuned model: the ChatML format, and replies streamed by lesson 9's
sampler.

An instruct model was fine-tuned on conversations written in one fixed format, and it answers well
only when its prompt is written the same way. SmolLM2 uses ChatML: each message between two special
tokens, the role on the first line, then an open assistant turn for the model to fill::

    <|im_start|>system
    You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
    <|im_start|>user
    What is the capital of France?<|im_end|>
    <|im_start|>assistant

The model ends its reply with ``<|im_end|>``, where generation stops. A conversation is the whole
history, sent again each turn: the model remembers nothing between calls.

What it leaves out: Jinja. A released file carries its template as a small Jinja program; this
module takes only the default system line out of it and writes ChatML itself (the tests render the
template with Jinja and check both give the same text). Beam search: a chat samples, or decodes
greedily.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from .errors import SLMError
from .sampling import SamplingOptions, _text_pieces, check_length, sampling_options, token_stream

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")


def default_system(chat_template: str | None) -> str | None:
    """The system message a ChatML template adds when a chat starts without one (None: it adds
    none)."""
    if not chat_template or IM_START not in chat_template:
        raise SLMError("this tokenizer has no ChatML chat template "
                       "(<|im_start|>role ... <|im_end|>); "
                       "load an instruct model such as load_pretrained()'s SmolLM2-135M-Instruct")
    found = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", chat_template, re.DOTALL)
    return found.group(1) if found else None


def check_messages(messages) -> list[dict[str, str]]:
    """``messages`` as a list of {"role", "content"} dicts, or a one-line SLMError saying what is
    wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SLMError("a chat is a non-empty list of messages like {'role': 'user', 'content': "
                       "'Hi!'}")
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ROLES
                and isinstance(m.get("content"), str)):
            raise SLMError(f"each message needs a role ({', '.join(ROLES)}) and a str content, got "
                           f"{m!r}")
    return list(messages)


def chat_text(messages, chat_template: str | None) -> str:
    """The text the model reads: the template's default system line when the chat has none, every
    message in ChatML, then the open assistant turn (what Hugging Face's ``apply_chat_template``
    gives with ``add_generation_prompt=True``)."""
    messages = check_messages(messages)
    system = default_system(chat_template)
    if messages[0]["role"] != "system" and system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return turns + f"{IM_START}assistant\n"


def chat_ids(tokenizer, messages) -> list[int]:
    """The token ids of ``chat_text``: the markers are special tokens, the messages ordinary
    text."""
    return tokenizer.encode(chat_text(messages, tokenizer.chat_template), allowed_special="all")


def training_pair(tokenizer, messages) -> tuple[list[int], list[int]]:
    """A chat that ends with the assistant's reply, as fine-tuning data: (prompt ids, reply ids).

    The prompt is what the model reads at chat time (``chat_ids`` of the messages before the reply,
    open assistant turn included); the reply is the text the model should write, then
    ``<|im_end|>``, so that it learns to stop. Fine-tuning counts the loss on the reply's tokens
    only (``data.ChatExamples``)."""
    *prompt, reply = check_messages(messages)
    if reply["role"] != "assistant" or not prompt:
        raise SLMError("a training chat ends with the assistant's reply, after at least one "
                       "message (e.g. a user's question)")
    end = tokenizer.encode(IM_END, allowed_special="all")
    return chat_ids(tokenizer, prompt), tokenizer.encode(reply["content"]) + end


def reply_stream(model, tokenizer, messages, max_new_tokens: int = 256,
                 options: SamplingOptions | None = None, *,
                 seed: int | None = None, **settings) -> Iterator[str]:
    """Yield the assistant's reply to ``messages``, piece by piece, until it writes ``<|im_end|>``.

    Sampling settings are lesson 9's (``SamplingOptions`` or its fields as keywords: temperature,
    top_k, top_p, repetition_penalty, stop); temperature 0 is greedy. The KV cache reserves the
    prompt's positions and ``max_new_tokens`` more, not the model's whole context. A chat that would
    not fit in the context is refused here, before any forward pass.
    """
    options = sampling_options(options, **settings)
    check_length(max_new_tokens)
    if options.num_beams != 1:
        raise SLMError("a chat samples (or decodes greedily with temperature 0); "
                       "num_beams must be 1")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise SLMError("seed must be an integer (or None for a fresh sample each time), got "
                       f"{seed!r}")
    ids = chat_ids(tokenizer, messages)
    if len(ids) + max_new_tokens > model.block_size:
        raise SLMError(f"the chat is {len(ids):,} tokens and its reply may take "
                       f"{max_new_tokens:,} more, beyond the model's context of "
                       f"{model.block_size:,}; start a new chat or ask for fewer new tokens")
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens = token_stream(model, idx, max_new_tokens, options, generator=generator)
    return _text_pieces(_until(tokens, tokenizer.special_tokens[IM_END]), tokenizer, options.stop)


def _until(tokens: Iterator[torch.Tensor], end_id: int) -> Iterator[torch.Tensor]:
    with contextlib.closing(tokens):  # a reply that ends early still ends the sampler's generator
        for token in tokens:
            if token.item() == end_id:
                return
            yield token


class Chat:
    """A conversation: its history, and each reply streamed as it is written.

    >>> chat = Chat(model, tokenizer, temperature=0)
    >>> print("".join(chat.send("What is the capital of France?")))
    The capital of France is Paris.
    >>> chat.history[-1]
    {'role': 'assistant', 'content': 'The capital of France is Paris.'}

    ``system`` replaces the template's default system line. A reply stopped halfway (its stream
    closed, or Ctrl-C) stays in the history as far as it got.
    """

    def __init__(self, model, tokenizer, system: str | None = None, max_new_tokens: int = 256,
                 options: SamplingOptions | None = None, **settings):
        self.model, self.tokenizer = model, tokenizer
        self.options = sampling_options(options, **settings)
        check_length(max_new_tokens)
        self.max_new_tokens = max_new_tokens
        # no ChatML template: say so now, not at the first message
        default_system(tokenizer.chat_template)
        self.history: list[dict[str, str]] = ([] if system is None
                                              else [{"role": "system", "content": system}])

    def send(self, message: str, options: SamplingOptions | None = None, *, seed: int | None = None,
             max_new_tokens: int | None = None) -> Iterator[str]:
        """Stream the reply to ``message``; both join the history. Options default to the chat's
        own. Bad input (a non-str message, a chat too long for the context) raises now, not at the
        first piece."""
        if not isinstance(message, str):
            raise SLMError(f"a message must be a str, got {type(message).__name__}")
        messages = [*self.history, {"role": "user", "content": message}]
        length = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        pieces = reply_stream(self.model, self.tokenizer, messages, length, options or self.options,
                              seed=seed)
        return self._recorded(messages, pieces)

    def _recorded(self, messages, pieces: Iterator[str]) -> Iterator[str]:
        reply = []
        try:
            for piece in pieces:
                reply.append(piece)
                yield piece
        finally:
            self.history = [*messages, {"role": "assistant", "content": "".join(reply)}]

    def reset(self) -> None:
        """Forget the conversation (a system message given at the start stays)."""
        self.history = [m for m in self.history[:1] if m["role"] == "system"]
