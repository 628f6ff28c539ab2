"""Run configurations: YAML presets shipped in the package, overrides, and a ready-to-train Trainer.

A config names the data, the tokenizer, the model shape and the training recipe::

    data: shakespeare        # a corpus name (see slm_helpers.data.CORPORA) or a UTF-8 text file
    tokenizer: char          # or gpt2: GPT-2's BPE, the text tokenized once into token files
    (tokens.py) model: {n_layer: 6, n_head: 6, n_embd: 384, block_size: 256, dropout: 0.2}
    train: {max_iters: 5000, batch_size: 64, learning_rate: 1.0e-3}

``model`` is a ``GPTConfig`` (its ``vocab_size`` comes from the tokenizer) and ``train`` a
``TrainConfig``: ``from_mapping`` turns each YAML mapping into its dataclass, rejecting unknown keys
and wrong types and turning whole numbers into floats where a float is meant; each dataclass checks
its own ranges in ``__post_init__``. So a misspelt or mistyped key is an error that names it. With
``tokenizer: gpt2`` ``data`` may also name a TinyStories dataset (``tinystories``,
``tinystories-valid``; see data.CORPORA) or a folder of prepared token files.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from . import distributed
from .data import check_val_fraction, load_text, train_val_split
from .errors import SLMError
from .model import GPT, GPTConfig
from .tokenizers import CharTokenizer, gpt2_tokenizer, tokenizer_from_dict
from .tokens import TokenFile, load_meta, token_dataset
from .train import TrainConfig, Trainer

PRESET_DIR = Path(__file__).parent / "configs"
TOKENIZERS = ("char", "gpt2")

# The model a lesson trains, per kind of device, sized
# so that every lesson opened fresh on a free Colab
# T4 finishes in 10 minutes: (GPU with native bfloat16,
# older GPU such as a T4 or V100, CPU or Apple MPS).
LESSON_PRESETS = {
    # lessons 6, 9, 10
    "shakespeare-char": ("shakespeare-char", "shakespeare-char-t4", "shakespeare-char-cpu"),
    "tinystories": ("tinystories-small", "tinystories-t4", "tinystories-tiny"),  # lesson 8
}


def lesson_preset(family: str, device: torch.device | str) -> str:
    """The preset of ``family`` (a key of LESSON_PRESETS) that suits ``device``."""
    from .device import supports_bf16

    if family not in LESSON_PRESETS:
        raise SLMError(f"unknown preset family {family!r}; choose one of: "
                       f"{', '.join(LESSON_PRESETS)}")
    fast_gpu, older_gpu, cpu = LESSON_PRESETS[family]
    device = torch.device(device)
    if device.type != "cuda":
        return cpu
    return fast_gpu if supports_bf16(device) else older_gpu


def runs_dir(default: str | Path = "runs") -> Path:
    """Where runs and checkpoints go: ``$SLM_RUNS_DIR`` if set (on Colab, a folder on a mounted
    Google Drive keeps lesson 6's model for lessons 9 and 10), else ``default``."""
    return Path(os.environ.get("SLM_RUNS_DIR") or default)


@dataclass
class RunConfig:
    data: str = "shakespeare"
    tokenizer: str = "char"
    val_fraction: float = 0.1
    # its vocab_size is set by the tokenizer (gpt_config)
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "custom"

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise SLMError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got "
                           f"{self.tokenizer!r}")
        check_val_fraction(self.val_fraction)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's config for a tokenizer of ``vocab_size`` tokens."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A preset by name, or a YAML file by path, with ``section.key=value`` overrides applied."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in list_presets():
            raise SLMError(f"unknown preset {name_or_path!r}; choose one of: "
                           f"{', '.join(list_presets())}")
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SLMError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SLMError(f"config file {path} is not valid YAML "
                       f"({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SLMError(f"config file {path} must be a mapping of keys to values")
    given = {}  # section.key: the override that set it, named in errors instead of the file
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise SLMError(f"override {override!r} must look like key=value, e.g. "
                           "train.max_iters=100")
        *parents, leaf = key.strip().split(".")
        target = raw
        for part in parents:
            if target.get(part) is None:
                target[part] = {}
            if not isinstance(target[part], dict):
                raise SLMError(f"override {override!r}: {part!r} is not a section with keys; "
                               "use section.key=value only for model and train")
            target = target[part]
        target[leaf] = yaml.safe_load(value)
        given[key.strip()] = f"--set {override}"
    raw.setdefault("name", path.stem)
    return from_mapping(RunConfig, raw, str(path), given=given)


def from_mapping(cls, mapping, where: str, prefix: str = "", given: dict[str, str] | None = None):
    """A ``cls`` dataclass from a YAML mapping: every key must be one of its fields, of the field's
    type (an int is welcome where a float is meant; a nested dataclass comes from a nested mapping,
    its keys named ``section.key``). ``where`` names the file in errors, ``given`` the command-line
    option that set a ``section.key`` instead. Ranges are for ``cls.__post_init__``. A model section
    never sets ``vocab_size``: the tokenizer decides it."""
    given = given or {}

    def origin(key: str) -> str:
        return f"from {given[prefix + key]}" if prefix + key in given else f"in {where}"

    if not isinstance(mapping, dict):
        raise SLMError(f"{prefix.rstrip('.') or 'the config'} in {where} must be a mapping of keys "
                       f"to values, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "vocab_size"}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise SLMError(f"unknown key(s) {', '.join(prefix + k for k in unknown)} "
                       f"{origin(unknown[0])}; known keys: "
                       f"{', '.join(prefix + k for k in sorted(fields))}")
    values = {}
    for key, value in mapping.items():
        f = fields[key]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            values[key] = from_mapping(type(default), {} if value is None else value, where,
                                       f"{prefix}{key}.", given)
            continue
        kind = type(default)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # True is an int too
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise SLMError(f"{prefix}{key} {origin(key)} must be {kind.__name__}, got {value!r}")
        values[key] = value
    return cls(**values)


def build_trainer(run: RunConfig, *, out_dir: str | Path | None = None,
                  device: torch.device | str = "cpu",
                  resume_from: str | Path | None = None) -> Trainer:
    """Load the text, tokenize it, build the model and return a Trainer ready to ``fit``.

    When resuming, the tokenizer comes from the checkpoint, so the ids mean what they meant before.
    """
    from .checkpoint import load_checkpoint

    state = load_checkpoint(resume_from) if resume_from is not None else None
    trained_on = (state or {}).get("run")  # checkpoints from before it was recorded have none
    if trained_on and (trained_on["preset"], trained_on["data"]) != (run.name, run.data):
        raise SLMError(f"{resume_from} was trained with preset {trained_on['preset']} on "
                       f"{trained_on['data']}, not {run.name} on {run.data}; resume with --preset "
                       f"{trained_on['preset']} --data {trained_on['data']}, or train into a new "
                       "--out folder")
    if run.tokenizer == "gpt2":
        tokenizer = tokenizer_from_dict(state["tokenizer"]) if state else gpt2_tokenizer()
        train_data, val_data = _token_files(run)
    else:
        text = load_text(run.data)
        tokenizer = (tokenizer_from_dict(state["tokenizer"]) if state
                     else CharTokenizer.from_text(text))
        data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        train_data, val_data = train_val_split(data, run.val_fraction)
    model = GPT(run.gpt_config(tokenizer.vocab_size))
    trainer = Trainer(model, train_data, val_data, run.train, tokenizer=tokenizer, out_dir=out_dir,
                      device=device)
    # saved in checkpoints, checked when resuming
    trainer.run = {"preset": run.name, "data": run.data}
    if state is not None:
        trainer.load_state_dict(state)
    return trainer


def _token_files(run: RunConfig) -> tuple[TokenFile, TokenFile]:
    """The GPT-2 token files of ``run.data``, tokenized on first use. Under torchrun one process
    prepares them (and downloads what is needed) while the others wait, then all read the same
    files."""
    folder = token_dataset(run.data,
                           val_fraction=run.val_fraction) if distributed.is_main() else None
    distributed.barrier()
    folder = folder or token_dataset(run.data, val_fraction=run.val_fraction)
    if load_meta(folder).get("tokenizer") != "gpt2":
        raise SLMError(f"{folder} holds tokens of another tokenizer; prepare {run.data} with "
                       "tokenizer: gpt2")
    return TokenFile(folder / "train.bin"), TokenFile(folder / "val.bin")


def train_or_load(name_or_path: str | Path, out_dir: str | Path, *,
                  overrides: list[str] | tuple[str, ...] = (),
                  device: torch.device | str = "cpu", plot=None, progress: bool = True) -> Trainer:
    """A trained model for lessons that need one: resume the run in ``out_dir`` (finishing it if it
    stopped early, doing nothing if it is complete), or train it from scratch there."""
    from .device import seed_everything

    run = load_config(name_or_path, overrides)
    last = Path(out_dir) / "last.pt"
    seed_everything(run.train.seed)
    trainer = build_trainer(run, out_dir=out_dir, device=device,
                            resume_from=last if last.is_file() else None)
    trainer.fit(plot=plot, progress=progress)
    return trainer
