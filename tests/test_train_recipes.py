"""The recipes of lesson 8 in train.py: accumulation, mixed precision, compile, fused attention,
tokens/s and MFU, perplexity; the GPT-2 presets; the config checks of the new keys."""

import copy
import math

import pytest
import torch

from slm_helpers import precision
from slm_helpers.config import load_config
from slm_helpers.data import batch_at
from slm_helpers.device import seed_everything
from slm_helpers.errors import SLMError
from slm_helpers.metrics import PEAK_FLOPS, describe, flops_per_token, mfu, peak_flops
from slm_helpers.model import GPT, CausalSelfAttention, GPTConfig
from slm_helpers.precision import MixedPrecision, autocast_dtype
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer

CPU = torch.device("cpu")


@pytest.fixture
def corpus(poem_text):
    tok = CharTokenizer.from_text(poem_text)
    data = torch.tensor(tok.encode(poem_text))
    n = int(0.9 * len(data))
    return tok, data[:n], data[n:]


def _trainer(corpus, seed=0, **overrides):
    tok, train, val = corpus
    seed_everything(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16,
                          dropout=0.0))
    cfg = dict(max_iters=4, batch_size=4, learning_rate=1e-2, min_lr=1e-3, warmup_iters=1,
               eval_interval=2,
               eval_iters=2, seed=7)
    return Trainer(model, train, val, TrainConfig(**{**cfg, **overrides}), tokenizer=tok)


# ---------------------------------------------------------------- gradient accumulation

def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(corpus):
    """4 micro-batches of 4 sequences, accumulated, give the gradient of one batch of 16: equal up
    to float32 rounding (the sums are taken in another order), here within 1e-6 absolute + 1e-5
    relative."""
    trainer = _trainer(corpus, grad_accum=4, grad_clip=0.0)
    reference = copy.deepcopy(trainer.model)  # the weights before the step
    train = trainer.splits["train"]
    # what the step draws
    starts = torch.randint(len(train) - 8, (16,), generator=torch.Generator().manual_seed(7))
    x, y = batch_at(train, starts, 8)
    _, big_loss = reference(x, y)
    big_loss.backward()
    loss = trainer.train_step()
    assert loss == pytest.approx(big_loss.item(), rel=1e-6)
    assert trainer.tokens_per_step == 4 * 4 * 8
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_grad_accum_must_be_positive():
    with pytest.raises(SLMError, match="grad_accum"):
        TrainConfig(grad_accum=0)


# ---------------------------------------------------------------- mixed precision

def test_autocast_choices_on_the_cpu():
    assert autocast_dtype("float32", CPU) == (None, None)
    assert autocast_dtype("auto", CPU) == (None, None)  # bfloat16 is rarely faster on a CPU
    # asked for: computed correctly
    assert autocast_dtype("bfloat16", CPU) == (torch.bfloat16, None)
    dtype, note = autocast_dtype("float16", CPU)
    assert dtype is None and "float32" in note and "\n" not in note
    dtype, note = autocast_dtype("bfloat16", torch.device("mps"))
    assert dtype is None and "float32 on mps" in note


@pytest.mark.parametrize("capability, bf16, expected",
                         [((8, 0), True, torch.bfloat16), ((7, 5), False, torch.float16)])
def test_autocast_choices_on_a_gpu(monkeypatch, capability, bf16, expected):
    """The CUDA branches, without a GPU: only the compute capability is asked (8+: native
    bfloat16)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    gpu = torch.device("cuda")
    assert autocast_dtype("auto", gpu) == (expected, None)
    assert autocast_dtype("float16", gpu) == (torch.float16, None)
    assert autocast_dtype("bfloat16", gpu)[0] is expected
    # a note when falling back to float16
    assert (autocast_dtype("bfloat16", gpu)[1] is None) == bf16


def test_mixed_precision_is_one_object_with_its_scaler(monkeypatch):
    plain = MixedPrecision("float32", "cpu")
    assert plain.dtype is None and not plain.scaler.is_enabled() and plain.state_dict() == {}
    with plain.autocast():
        assert not torch.is_autocast_enabled("cpu")
    bf16 = MixedPrecision("bfloat16", "cpu")
    # float32's range: no scaling
    assert bf16.dtype is torch.bfloat16 and not bf16.scaler.is_enabled()
    with bf16.autocast():
        assert (torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    assert MixedPrecision("float16", "cpu").note.startswith("float16 training needs a CUDA GPU")
    monkeypatch.setattr(precision, "autocast_dtype", lambda name, device: (torch.float16, None))
    fp16, again = MixedPrecision("float16", "cpu"), MixedPrecision("float16", "cpu")
    assert fp16.scaler.is_enabled() and fp16.state_dict()["scale"] == 2.0**16
    fp16.scaler.scale(torch.ones(()))  # the scale is made at its first use
    fp16.scaler.update(1024.0)
    again.load_state_dict(fp16.state_dict())
    again.load_state_dict({})  # an old float32 checkpoint's empty scaler state changes nothing
    assert again.scaler.get_scale() == 1024.0


def test_float16_on_the_cpu_falls_back_to_float32_with_one_line(corpus, capsys):
    trainer = _trainer(corpus, dtype="float16")
    assert trainer.amp_dtype is None and not trainer.amp.scaler.is_enabled()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("note: float16 training needs a CUDA GPU")
    reference = _trainer(corpus)
    trainer.fit(progress=False)
    reference.fit(progress=False)
    assert trainer.step_losses == reference.step_losses  # plain float32, bit for bit


def test_bfloat16_autocast_on_the_cpu_trains_close_to_float32(corpus):
    bf16, fp32 = _trainer(corpus, dtype="bfloat16"), _trainer(corpus)
    x, y = batch_at(bf16.splits["train"], torch.tensor([0, 5]), 8)
    with bf16.amp.autocast():
        logits, loss = bf16.model(x, y)
    # cross-entropy stays in float32
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert bf16.model.lm_head.weight.dtype == torch.float32  # the weights themselves stay float32
    bf16.fit(progress=False)
    fp32.fit(progress=False)
    assert bf16.step_losses != fp32.step_losses
    for a, b in zip(bf16.step_losses, fp32.step_losses):
        # bfloat16 keeps 8 bits of mantissa: close, not equal
        assert a == pytest.approx(b, abs=0.05)


def test_the_gradient_scaler_path_and_its_checkpoint(corpus, monkeypatch, tmp_path):
    """float16 + GradScaler (the CUDA recipe), run on the CPU's float16 autocast to exercise the
    code."""
    monkeypatch.setattr(precision, "autocast_dtype", lambda name, device: (torch.float16, None))
    trainer = _trainer(corpus, dtype="float16")
    assert trainer.amp.scaler.is_enabled()
    trainer.out_dir = tmp_path
    trainer.fit(progress=False)
    assert all(math.isfinite(loss) for loss in trainer.step_losses)
    state = trainer.state_dict()
    assert state["scaler"]["scale"] > 0
    resumed = _trainer(corpus, seed=1, dtype="float16")
    resumed.load_state_dict(state)
    assert resumed.amp.scaler.get_scale() == trainer.amp.scaler.get_scale()


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_float16_with_the_gradient_scaler_trains_like_float32(corpus, monkeypatch, grad_clip):
    """The same 6 steps in float16 + GradScaler (CPU autocast) and in plain float32: every step's
    loss within 1e-3 and, with clipping, the gradient norm before clipping within 1%, as the true
    gradients give. A clip of the still-scaled gradients would see norms 65,536 times too large (the
    scaler's starting scale) and shrink every step to nothing. At this size no step overflows (the
    scale stays at 65,536); a skipped step would make the two runs part ways by design."""
    fp32 = _trainer(corpus, grad_clip=grad_clip)
    monkeypatch.setattr(precision, "autocast_dtype", lambda name, device: (torch.float16, None))
    fp16 = _trainer(corpus, dtype="float16", grad_clip=grad_clip)
    assert fp16.amp.scaler.is_enabled() and not fp32.amp.scaler.is_enabled()
    with fp16.amp.autocast():
        assert fp16.model(*batch_at(fp16.splits["train"], torch.tensor([0]),
                                    8))[0].dtype == torch.float16
    losses, norms = {"fp16": [], "fp32": []}, {"fp16": [], "fp32": []}
    for _ in range(6):
        for name, trainer in (("fp16", fp16), ("fp32", fp32)):
            losses[name].append(trainer.train_step())
            norms[name].append(trainer.grad_norm)
    assert fp16.amp.scaler.get_scale() == 2.0**16  # no step was skipped
    if grad_clip:
        assert norms["fp16"] == pytest.approx(norms["fp32"], rel=1e-2)
        assert max(norms["fp32"]) > grad_clip  # clipping did act on some steps
    else:
        assert norms["fp16"] == norms["fp32"] == [None] * 6
    assert losses["fp16"] == pytest.approx(losses["fp32"], abs=1e-3)
    assert losses["fp16"][-1] < losses["fp16"][0] - 0.15  # and it learns


# ---------------------------------------------------------------- compile and fused attention

def test_compile_flag_reaches_torch_compile(corpus, monkeypatch):
    """torch.compile on a CPU needs a C compiler and a minute; here it is replaced by a recorder."""
    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert _trainer(corpus).train_model is not None and compiled == []
    trainer = _trainer(corpus, compile=True)
    assert compiled == [trainer.model]
    trainer.fit(progress=False)
    # plain module saved
    assert not any(k.startswith("_orig_mod") for k in trainer.state_dict()["model"])


def test_fused_attention_can_be_switched_off_and_computes_the_same(corpus):
    fused, explicit = _trainer(corpus), _trainer(corpus, fused_attention=False)
    layers = [m for m in explicit.model.modules() if isinstance(m, CausalSelfAttention)]
    assert len(layers) == 2 and not any(m.fused for m in layers)
    assert all(m.fused for m in fused.model.modules() if isinstance(m, CausalSelfAttention))
    fused.fit(progress=False)
    explicit.fit(progress=False)
    for a, b in zip(fused.step_losses, explicit.step_losses):
        assert a == pytest.approx(b, abs=1e-5)


# ---------------------------------------------------------------- speed, MFU, perplexity

def test_flops_per_token_is_six_n_plus_attention():
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=4, n_embd=64))
    assert flops_per_token(model) == 6 * model.num_params() + 12 * 3 * 4 * 16 * 32
    assert mfu(1000.0, 2e9, 1e12) == pytest.approx(2.0)  # 2e12 FLOP/s of a 1e12 device
    assert mfu(1000.0, 2e9, 1e12, devices=4) == pytest.approx(0.5)
    assert mfu(None, 2e9, 1e12) is None and mfu(1000.0, 2e9, None) is None


@pytest.mark.parametrize("tie", [True, False])
def test_flops_per_token_counts_the_output_layer_not_the_lookups(tie):
    """By hand: per block the attention (4d²) and MLP (8d²) matrices and two LayerNorm gains, then
    the final gain and the V x d output layer. An untied token embedding is a lookup, like the
    position embedding: tied or not, the count is the same."""
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=4, n_embd=64,
                          tie_embeddings=tie))
    d = 64
    multiplies = 3 * (12 * d * d + 2 * d) + d + 100 * d
    assert flops_per_token(model) == 6 * multiplies + 12 * 3 * 4 * 16 * 32


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
    ("Tesla T4", 65e12),
    ("Tesla V100-SXM2-16GB", 125e12), ("NVIDIA GeForce RTX 4090", 165e12),
    ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA A10G", None), ("Some Future GPU", None),
])
def test_peak_flops_table(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    assert peak_flops(torch.device("cuda")) == peak


def test_no_peak_is_claimed_for_cpu_or_mps():
    assert peak_flops(CPU) is None and peak_flops(torch.device("mps")) is None
    assert all(flops > 1e12 for _, flops in PEAK_FLOPS)


def test_history_has_speed_mfu_and_perplexity(corpus):
    trainer = _trainer(corpus)
    history = trainer.fit(progress=False)
    first, last = history[0], history[-1]
    assert first["tokens_per_sec"] is None and last["tokens_per_sec"] > 0
    assert last["mfu"] is None and "MFU n/a" in describe(last)  # no peak claimed for a CPU
    assert last["val_ppl"] == pytest.approx(math.exp(last["val"]))
    assert "perplexity" in describe(first) and "tokens/s" not in describe(first)
    trainer.speed.peak_flops = 1e12  # as if on a GPU of 1 TFLOP/s
    history = trainer.fit(6, progress=False)
    expected = history[-1]["tokens_per_sec"] * trainer.speed.flops_per_token / 1e12
    assert history[-1]["mfu"] == pytest.approx(expected) and "MFU" in describe(history[-1])


# ---------------------------------------------------------------- presets and config keys

@pytest.mark.parametrize("preset, millions, target", [
    # The GPU presets round the vocabulary up to 50,304
    # rows (vocab_multiple: 64), which the count includes.
    ("tinystories-tiny", 5.711, 6), ("tinystories-small", 26.398, 25),
    ("tinystories-medium", 81.111, 85),
])
def test_gpt2_presets_have_the_advertised_size(preset, millions, target):
    """Counted by GPT.num_params(): the (tied) token embedding included, the position embedding
    not."""
    run = load_config(preset)
    assert run.tokenizer == "gpt2" and run.data.startswith("tinystories")
    with torch.device("meta"):  # no memory, no initialisation: just the shapes
        model = GPT(run.gpt_config(50257))
    assert model.num_params() / 1e6 == pytest.approx(millions, abs=0.001)
    assert abs(model.num_params() / 1e6 - target) / target < 0.1  # "about 6M / 25M / 85M"
    assert (model.num_params(non_embedding=False) - model.num_params()
            == run.model.block_size * run.model.n_embd)


@pytest.mark.parametrize("override, named", [
    ("train.dtype=float8", "dtype"),
    ("train.compile=1", "train.compile"),
    ("train.fused_attention=maybe", "train.fused_attention"),
    ("train.grad_accum=0", "grad_accum"),
    ("train.grad_accum=1.5", "train.grad_accum"),
    ("train.log_interval=-1", "log_interval"),
    ("train.wandb=please", "train.wandb"),
    ("train.wandb_project=3", "train.wandb_project"),
    ("train.gradient_accumulation=4", "gradient_accumulation"),
    ("tokenizer=sentencepiece", "tokenizer"),
])
def test_new_config_keys_are_checked_by_name(override, named):
    with pytest.raises(SLMError, match=named):
        load_config("tinystories-tiny", [override])


def test_new_config_keys_are_set_by_overrides():
    run = load_config("tinystories-tiny",
                      ["train.dtype=bfloat16", "train.compile=true", "train.grad_accum=8",
                       "train.fused_attention=false", "train.log_interval=5", "train.wandb=true",
                       "train.wandb_project=my-runs"])
    t = run.train
    assert (t.dtype, t.compile, t.grad_accum, t.fused_attention) == ("bfloat16", True, 8, False)
    assert (t.log_interval, t.wandb, t.wandb_project) == (5, True, "my-runs")
