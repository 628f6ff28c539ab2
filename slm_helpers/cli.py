"""Command line: train a preset or a YAML config on any text file, resume it, sample from it, chat.

    python -m slm_helpers train --preset shakespeare-char-cpu [--data FILE] [--out DIR] [--resume]
    python -m slm_helpers train --config my.yaml --set train.max_iters=2000
        --set train.dtype=bfloat16
    # data parallel (DDP):
    torchrun --nproc_per_node 4 -m slm_helpers train --preset tinystories-small
    python -m slm_helpers sample --checkpoint runs/shakespeare-char-cpu/best.pt --prompt "ROMEO:"
    python -m slm_helpers chat                      # talk to SmolLM2-135M-Instruct in the terminal
    python -m slm_helpers chat --prompt "What is the capital of France?" --temperature 0
    python -m slm_helpers finetune --task json --out runs/lora-json  # LoRA; --full: every weight
    python -m slm_helpers chat --adapter runs/lora-json/adapter.pt  # chat with the fine-tuned model

``chat`` without ``--prompt`` reads a message per line and streams each reply, keeping the history;
/reset starts a new chat, /exit (or Ctrl-D) quits, Ctrl-C stops a reply (it stays in the chat, as
far as it got) and, at the prompt, quits. With ``--prompt`` it prints only the reply.

``finetune`` teaches SmolLM2 a task of tasks.py (lesson 13) with the course's Trainer, writes the
adapter (``adapter.pt``, or with ``--full`` the whole model's checkpoints), scores the result on
held-out examples and writes what it measured to ``summary.json``.

Bad input ends the program with one line on stderr and exit status 2, never a traceback; Ctrl-C
ends it with exit status 130. A second ``train`` into a folder where one is running stops at once
(``train.lock`` there names the running one's process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SLMError


def _train_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .config import list_presets

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help=f"one of: {', '.join(list_presets())}")
    source.add_argument("--config",
                        help="a YAML config file (see slm_helpers/configs/ for examples)")
    parser.add_argument("--data",
                        help="train on this UTF-8 text file (or corpus name) instead of the "
                             "preset's")
    parser.add_argument("--out",
                        help="folder for checkpoints (default: runs/<preset name>, $SLM_RUNS_DIR "
                             "for runs/)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_iters=200 (repeatable)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="train for this many seconds (> 0; evaluations excluded) instead of "
                             "max_iters steps; warm-up and decay follow the clock (same as --set "
                             "train.time_budget=SECONDS)")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the fastest available)")
    return parser


def _sample_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train")
    parser.add_argument("--prompt", default="",
                        help="text to continue (default: start from a line break)")
    parser.add_argument("--max-new-tokens", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 = greedy; higher = more random")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample from the smallest set with this mass")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 makes tokens already in the text less likely (CTRL's "
                             "penalty; 1 = off)")
    parser.add_argument("--num-beams", type=int, default=1,
                        help="beam search with this many beams (1 = sample); it ignores "
                             "temperature, top-k, top-p")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search ranks finished text by log-probability / length ** this")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help=r"stop before this text, e.g. --stop '\n\n' (repeatable; \n \t \\ are "
                             r"escapes)")
    parser.add_argument("--stream", action="store_true",
                        help="print the text token by token as it is written")
    parser.add_argument("--no-cache", action="store_true",
                        help="generate without the KV cache (slower)")
    parser.add_argument("--seed", type=int, default=None, help="make the sample repeatable")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the fastest available)")
    return parser


# SmolLM2's model card samples with temperature 0.2 and top-p 0.9: close to the most likely reply (a
# 135M model drifts off topic at higher temperatures), yet not the same reply every time as greedy
# (0) is.
CHAT_TEMPERATURE, CHAT_TOP_P = 0.2, 0.9
CHAT_HELP = "/reset starts a new chat, /exit (or Ctrl-D) quits, Ctrl-C stops a reply"


def _chat_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--prompt", help="send this one message, print only the reply and exit "
                                         "(default: chat in the terminal, a message per line)")
    parser.add_argument("--system",
                        help="the system message (default: the one the model's chat template adds)")
    parser.add_argument("--gguf", metavar="PATH",
                        help="a Llama-architecture GGUF file (default: the installed "
                             "SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", metavar="PATH",
                        help="LoRA adapters written by finetune, put on the model")
    parser.add_argument("--temperature", type=float, default=CHAT_TEMPERATURE,
                        help=f"0 = greedy; higher = more random (default {CHAT_TEMPERATURE}, "
                             "SmolLM2's recommendation)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=CHAT_TOP_P,
                        help=f"sample from the smallest set with this mass (default {CHAT_TOP_P}; "
                             "1 = off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0,
                        help="> 1 makes tokens already in the chat less likely (1 = off)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="the longest a reply may be, in tokens")
    parser.add_argument("--seed", type=int, default=None, help="make the replies repeatable")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the fastest available)")
    return parser


def _finetune_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--task", default="json",
                        help="the task to learn (json: a person's details as JSON)")
    parser.add_argument("--out", required=True,
                        help="folder for the adapter or checkpoints, metrics, summary.json")
    parser.add_argument("--full", action="store_true",
                        help="train every weight instead of LoRA adapters")
    # finetune.LORA_RANK and LORA_ALPHA (not imported here: the parser must not load torch)
    parser.add_argument("--rank", type=int, default=4,
                        help="LoRA's rank r: A is r x in, B is out x r, on every Linear of a block")
    parser.add_argument("--alpha", type=float, default=8.0,
                        help="LoRA's alpha: the update is scaled by alpha / r")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of 8 examples")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="train for this long instead")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    parser.add_argument("--test-examples", type=int, default=200,
                        help="held-out examples scored at the end")
    parser.add_argument("--gguf", metavar="PATH",
                        help="a Llama GGUF file (default: the installed SmolLM2)")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the fastest available)")
    return parser


def _unescape(text: str) -> str:
    r"""A shell cannot easily pass a line break: read \n, \t, \r and \\ in --stop as escapes."""
    import re

    return re.sub(r"\\([ntr\\])",
                  lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def train(args: argparse.Namespace) -> None:
    import os
    from contextlib import nullcontext

    from .checkpoint import lock_run_folder
    from .config import load_config, runs_dir

    _check_time_budget(args.time_budget)
    budget = [f"train.time_budget={args.time_budget}"] if args.time_budget is not None else []
    run = load_config(args.preset or args.config, [*args.set, *budget])
    if args.data:  # set as is: through YAML, a path such as "notes #2.txt" would lose its end
        run.data = args.data
    out_dir = Path(args.out or runs_dir() / run.name)
    # One run per folder: a second one would interleave its checkpoints with the first's. Under
    # torchrun the processes of one run share it, and the first (RANK 0) holds the lock for all.
    with lock_run_folder(out_dir) if os.environ.get("RANK", "0") == "0" else nullcontext():
        _train(args, run, out_dir)


def _check_time_budget(seconds: float | None) -> None:
    import math

    if seconds is not None and not 0 < seconds < math.inf:
        raise SLMError(f"--time-budget must be a positive number of seconds, got {seconds:g}; "
                       "leave it out to train max_iters steps")


def _last_checkpoint(out_dir: Path, resume: bool) -> Path:
    """``out_dir``/last.pt, checked against ``--resume``: it must exist to resume, and not exist
    otherwise."""
    last = out_dir / "last.pt"
    if resume and not last.is_file():
        raise SLMError(f"nothing to resume: {last} does not exist; train without --resume first")
    if not resume and last.is_file():
        raise SLMError(f"{out_dir} already holds a run; add --resume to continue it or pass a new "
                       "--out")
    return last


def _train(args: argparse.Namespace, run, out_dir: Path) -> None:
    from . import distributed
    from .config import build_trainer
    from .device import pick_device, seed_everything

    last = _last_checkpoint(out_dir, args.resume)
    device = pick_device(args.device)
    if distributed.launched_by_torchrun():
        device = distributed.setup(device)
    try:
        distributed.barrier()  # every process has checked the folder before rank 0 writes into it
        seed_everything(run.train.seed)
        trainer = build_trainer(run, out_dir=out_dir, device=device,
                                resume_from=last if args.resume else None)
        if distributed.is_main():
            print(f"{run.name}: {trainer.model.num_params() / 1e6:.2f}M parameters, "
                  f"{device} x {trainer.world_size}, "
                  f"{len(trainer.splits['train']):,} training tokens, "
                  f"{trainer.tokens_per_step:,} tokens per step, checkpoints in {out_dir}")
        history = trainer.fit()
        if distributed.is_main():
            print(f"done: step {history[-1]['step']}, val loss {history[-1]['val']:.4f}, "
                  f"best {trainer.best_val:.4f}, {trainer.train_seconds:.0f}s of training; "
                  "sample with:\n"
                  f"  python -m slm_helpers sample --checkpoint {out_dir / 'best.pt'}")
    finally:
        distributed.shutdown()


def finetune(args: argparse.Namespace) -> None:
    import json

    from .checkpoint import lock_run_folder
    from .device import pick_device, seed_everything
    from .finetune import finetune_config, finetune_trainer, summary
    from .lora import check_rank_alpha, save_adapter
    from .pretrained import load_pretrained
    from .tasks import TASKS

    # Checked before the (slow) model load.
    if args.task not in TASKS:
        raise SLMError(f"unknown --task {args.task!r}; choose one of {', '.join(TASKS)}")
    if not args.full:
        check_rank_alpha(args.rank, args.alpha)
    if args.steps < 1 or args.test_examples < 0:
        raise SLMError(f"--steps must be >= 1 and --test-examples >= 0, got {args.steps} and "
                       f"{args.test_examples}")
    _check_time_budget(args.time_budget)
    out_dir = Path(args.out)
    with lock_run_folder(out_dir):
        last = _last_checkpoint(out_dir, args.resume)
        device = pick_device(args.device)
        model, tokenizer = load_pretrained(args.gguf, device)
        seed_everything(0)
        cfg = finetune_config(args.full, args.steps, time_budget=args.time_budget or 0.0)
        trainer = finetune_trainer(model, tokenizer, task=args.task, full=args.full, rank=args.rank,
                                   alpha=args.alpha, cfg=cfg, out_dir=out_dir, device=device)
        if args.resume:
            trainer.resume(last)
        kind = "full fine-tuning" if args.full else f"LoRA (rank {args.rank}, alpha {args.alpha:g})"
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{args.task}: {kind}, {trained:,} trainable parameters, {device}; checkpoints in "
              f"{out_dir}")
        trainer.fit()
        if not args.full:
            print(f"adapter: {save_adapter(model, out_dir / 'adapter.pt')}")
        result = summary(trainer, tokenizer, args.task, args.test_examples)
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"exact match on {result['test_examples']} held-out examples: "
              f"{result['exact_match']:.1%}; {result['seconds_per_step']:.2f} s per step, "
              f"peak memory {result['peak_memory_mb']:,.0f} MB, "
              f"optimizer state {result['optimizer_state_mb']:,.1f} MB")


def sample(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .device import pick_device
    from .sampling import SamplingOptions, check_length, stream

    # Checked here, once, before the (slow) model load.
    options = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
                              length_penalty=args.length_penalty,
                              stop=tuple(_unescape(s) for s in args.stop))
    check_length(args.max_new_tokens)
    model, tokenizer, _ = load_model(args.checkpoint, pick_device(args.device))
    pieces = stream(model, tokenizer, args.prompt, args.max_new_tokens, options, seed=args.seed,
                    use_cache=not args.no_cache)  # a bad prompt fails here, before any output
    if args.stream:
        print(args.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print(args.prompt + "".join(pieces))


def chat(args: argparse.Namespace) -> None:
    from .chat import Chat
    from .device import pick_device
    from .pretrained import load_pretrained
    from .sampling import SamplingOptions, check_length

    # Checked here, before the (slow) model load; the file's own checks come first in
    # load_pretrained.
    options = SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty)
    check_length(args.max_new_tokens)
    device = pick_device(args.device)
    # None: the installed SmolLM2 (or how to install it)
    model, tokenizer = load_pretrained(args.gguf, device)
    if args.adapter:
        from .lora import load_adapter

        load_adapter(model, args.adapter)
    session = Chat(model, tokenizer, system=args.system, max_new_tokens=args.max_new_tokens,
                   options=options)
    if args.prompt is not None:
        # a chat too long for the context fails here
        pieces = session.send(args.prompt, seed=args.seed)
        try:
            for piece in pieces:
                print(piece, end="", flush=True)
        finally:
            print(flush=True)  # the reply's line ends, even when Ctrl-C cut it short
        return
    name = Path(args.gguf).name if args.gguf else "SmolLM2-135M-Instruct"
    _chat_in_terminal(session, f"{name} on {device}", args.seed)


def _chat_in_terminal(session, title: str, seed: int | None) -> None:
    """Read a message per line, stream each reply. Ctrl-C during a reply stops it (what was written
    stays in the history) and asks for the next message; Ctrl-C at the prompt reaches ``_run``:
    exit 130."""
    import contextlib

    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    print(f"chatting with {title}: type a message; {CHAT_HELP}", file=sys.stderr)
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            print()
            return
        if message in ("/exit", "/quit", "exit", "quit"):
            return
        if message == "/reset":
            session.reset()
            print("(a new chat)", file=sys.stderr)
            continue
        if not message or (message.startswith("/") and " " not in message):
            if message:
                print(f"unknown command {message}; {CHAT_HELP}", file=sys.stderr)
            continue
        try:
            pieces = session.send(message, seed=seed)
        except SLMError as err:  # e.g. the chat has grown past the context: /reset and go on
            print(f"error: {err}", file=sys.stderr)
            continue
        print("assistant> ", end="", flush=True)
        stopped = False
        try:
            with contextlib.closing(pieces):
                for piece in pieces:
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:
            stopped = True
        print(flush=True)
        if stopped:
            print("(stopped: the reply so far stays in the chat)", file=sys.stderr)


def _run(command, args: argparse.Namespace,
         interrupted: str = "interrupted; resume with --resume (the last checkpoint is intact)",
         ) -> int:
    try:
        command(args)
    except SLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slm_helpers",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _train_parser(commands.add_parser("train", help="train a GPT on a text file"))
    _sample_parser(commands.add_parser("sample", help="generate text from a checkpoint"))
    _chat_parser(commands.add_parser("chat",
                                     help="chat with an instruct model (default: "
                                          "SmolLM2-135M-Instruct)"))
    _finetune_parser(commands.add_parser("finetune",
                                         help="teach SmolLM2 a task: LoRA or full fine-tuning"))
    args = parser.parse_args(argv)
    if args.command == "chat":
        return _run(chat, args, interrupted="interrupted")
    return _run({"train": train, "sample": sample, "finetune": finetune}[args.command], args)


def train_main() -> int:
    """Console script ``slm-train``."""
    parser = _train_parser(argparse.ArgumentParser(prog="slm-train",
                                                   description="Train a GPT on a text file."))
    return _run(train, parser.parse_args())


def sample_main() -> int:
    """Console script ``slm-sample``."""
    parser = _sample_parser(argparse.ArgumentParser(prog="slm-sample",
                                                    description="Sample from a checkpoint."))
    return _run(sample, parser.parse_args())


def chat_main() -> int:
    """Console script ``slm-chat``."""
    parser = _chat_parser(argparse.ArgumentParser(prog="slm-chat",
                                                  description="Chat with an instruct model."))
    return _run(chat, parser.parse_args(), interrupted="interrupted")
