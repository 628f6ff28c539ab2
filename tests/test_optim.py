"""optim.py: Muon (orthogonalize, MuonAdamW) and make_optimizer's parameter groups, by module type.

The groups were chosen by parameter names (".h." for the blocks, "transformer.wte" for the
embeddings) and by dimension before they were chosen by module type; ``_groups_by_name`` is that old
rule, and every preset's model must be grouped by the new one exactly as by the old (the same
tensors in the same order: a checkpoint's optimizer state is matched to parameters by position).
"""

import pytest
import torch
import torch.nn as nn

from slm_helpers.config import list_presets, load_config
from slm_helpers.errors import SLMError
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.optim import MuonAdamW, make_optimizer, orthogonalize, param_kinds
from slm_helpers.train import TrainConfig, Trainer, lr_at

# Every switch away from GPT-2 at once: the fast presets' model.
MODERN = dict(position="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False,
              init="zero-out")


def config(**kwargs) -> GPTConfig:
    """A tiny GPT's config: 2 layers, 32 wide, 2 heads of 16, a context of 8 tokens, no dropout."""
    return GPTConfig(**{**dict(vocab_size=24, block_size=8, n_layer=2, n_head=2, n_embd=32,
                               dropout=0.0), **kwargs})


def test_optimizer_groups():
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1
                                                                for p in plain["params"])
    grouped = {id(p) for group in opt.param_groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    # the tied matrix only once
    assert len(decayed["params"]) + len(plain["params"]) == len(grouped)
    assert any(p is model.lm_head.weight for p in decayed["params"])
    # 2-D: wte (= lm_head), wpe, and per block c_attn, attn c_proj, c_fc, mlp c_proj.
    assert len(decayed["params"]) == 2 + 4 * 2
    # 1-D: per block two LayerNorms (weight and bias) and four Linear biases; the final LayerNorm.
    assert len(plain["params"]) == (4 + 4) * 2 + 2



# ---------------------------------------------------------------- Muon

@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_orthogonalize_is_close_to_u_vt(shape):
    torch.manual_seed(0)
    g = torch.randn(*shape)
    o = orthogonalize(g)
    assert o.shape == g.shape and o.dtype == g.dtype
    singular = torch.linalg.svdvals(o)
    assert singular.min() >= 0.6 and singular.max() <= 1.3  # measured over 5 seeds: 0.68 .. 1.14
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    assert (o - u @ vt).norm() / (u @ vt).norm() < 0.35  # measured over 5 seeds: 0.21 .. 0.23
    # Exactly what it approximates: each Newton-Schulz step maps every singular value s of g / |g|
    # to a·s + b·s³ + c·s⁵, five times over, and keeps the singular vectors. Measured: 1e-6 from
    # float64; 3, 4 or 6 steps instead of 5 are 0.03-0.16
    # off (the singular values keep moving within 0.68-1.2).
    a, b, c = 3.4445, -4.7750, 2.0315
    u, s, vt = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / g.double().norm()
    for _ in range(5):
        s = a * s + b * s ** 3 + c * s ** 5
    assert torch.allclose(o.double(), u @ torch.diag(s) @ vt, atol=1e-5)
    # the gradient's scale does not matter
    assert torch.allclose(orthogonalize(g * 1000), o, atol=1e-5)


def test_orthogonalize_of_a_zero_gradient_is_zero():
    """Zero-init gives every matrix but the head a zero gradient on step 1; dividing by its norm
    without a floor would make NaN (0 / 0) and spread it through the weights."""
    for shape in ((8, 4), (4, 8)):
        o = orthogonalize(torch.zeros(*shape))
        assert torch.isfinite(o).all() and (o == 0).all()


def step_together(a, b, ours, theirs, steps=5, before=lambda: None):
    """``steps`` steps of optimizers ``a`` (on ``ours``) and ``b`` (on ``theirs``) with the same
    random gradients."""
    for _ in range(steps):
        before()
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"),
                    reason="torch.optim.Muon needs torch 2.9 or newer")
def test_muon_agrees_with_torch_optim_muon():
    torch.manual_seed(0)
    # tall and wide: the sqrt(rows / cols) rule differs
    start = [torch.randn(48, 16), torch.randn(16, 48)]
    ours, theirs = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    a = MuonAdamW([{"params": ours, "muon": True}], lr=0.02, momentum=0.95, ns_dtype=torch.bfloat16,
                  weight_decay=0.01)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.01, momentum=0.95, nesterov=True,
                         adjust_lr_fn="original")
    step_together(a, b, ours, theirs)
    for p, q, p0 in zip(ours, theirs, start):
        # Both orthogonalise in bfloat16 with the same fused
        # multiply-adds (torch.addmm); measured (3 seeds):
        # identical on the CPU. Written as a*x + (b*A + c*A@A) @ x instead they differ by 1.9-2.5%
        # of the distance moved; without Nesterov by ~25%, without
        # the weight decay (or with momentum 0.9) by 6-11%.
        assert (p - q).norm() < 0.005 * (q - p0).norm()


def test_muon_adamw_groups_are_adamw():
    torch.manual_seed(0)
    start = [torch.randn(8, 12), torch.randn(16), torch.randn(5)]
    ours, theirs = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    # a Muon group beside them must not change their updates
    matrix = torch.randn(8, 8, requires_grad=True)
    a = MuonAdamW([{"params": [matrix], "muon": True}, {"params": ours[:2]},
                   {"params": ours[2:], "weight_decay": 0.0, "lr": 0.003}],
                  lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    b = torch.optim.AdamW([{"params": theirs[:2]},
                           {"params": theirs[2:], "weight_decay": 0.0, "lr": 0.003}],
                          lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    step_together(a, b, ours, theirs,
                  before=lambda: setattr(matrix, "grad", torch.randn_like(matrix)))
    for p, q, p0 in zip(ours, theirs, start):
        assert torch.allclose(p, q, atol=1e-6) and (p - p0).abs().max() > 1e-3


def test_muon_takes_matrices_only():
    with pytest.raises(SLMError, match="2-D"):
        MuonAdamW([{"params": [torch.zeros(4, 4, requires_grad=True),
                               torch.zeros(4, requires_grad=True)],
                    "muon": True}])
    # a vector in an AdamW group is fine
    MuonAdamW([{"params": [torch.zeros(4, requires_grad=True)]}])


def test_make_optimizer_for_muon():
    cfg = TrainConfig(optimizer="muon", muon_lr=0.03, learning_rate=0.008, embedding_lr=0.05,
                      max_iters=20,
                      warmup_iters=4, batch_size=2, eval_iters=1, weight_decay=0.1)
    torch.manual_seed(0)
    model = GPT(config(**MODERN))
    data = torch.randint(0, 24, (200,))
    trainer = Trainer(model, data, data, cfg)
    opt = trainer.optimizer
    assert isinstance(opt, MuonAdamW)
    named = dict(model.named_parameters())
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    (muon,) = [g for g in opt.param_groups if g["muon"]]
    assert ids(muon) == {id(p) for n,
                         p in named.items() if n.startswith("transformer.h.") and p.dim() == 2}
    assert muon["lr_scale"] == pytest.approx(0.03 / 0.008)
    (embedding,) = [g for g in opt.param_groups if id(model.transformer.wte.weight) in ids(g)]
    assert ids(embedding) == {id(model.transformer.wte.weight)} and not embedding["muon"]
    assert embedding["lr_scale"] == pytest.approx(0.05 / 0.008)
    adamw = [g for g in opt.param_groups if not g["muon"] and g is not embedding]
    head = [g for g in adamw if id(model.lm_head.weight) in ids(g)]
    assert len(head) == 1 and head[0].get("lr_scale", 1.0) == 1.0 and head[0]["weight_decay"] == 0.1
    gains = {id(p) for n, p in named.items() if p.dim() == 1}
    assert len(gains) == 2 * 2 + 1 and all(g["weight_decay"] == 0.0 for g in adamw
                                           if ids(g) & gains)
    assert gains <= set().union(*map(ids, adamw))
    everything = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each exactly once
    # at step 0: lr_at(0) = learning_rate / (warmup_iters + 1), scaled per group
    trainer.train_step()
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(lr_at(0, cfg) * group.get("lr_scale", 1.0))
    assert all("momentum" in opt.state[p] for p in muon["params"])
    assert all("exp_avg" in opt.state[p] for g in adamw for p in g["params"])
    # tied: the one matrix is the embedding (at embedding_lr), once
    tied_model = GPT(config(position="rope"))
    tied = make_optimizer(tied_model, cfg, torch.device("cpu"))
    assert sorted(id(p) for g in tied.param_groups
                  for p in g["params"]) == sorted(map(id, tied_model.parameters()))
    (shared,) = [g for g in tied.param_groups if id(tied_model.lm_head.weight) in ids(g)]
    assert shared["lr_scale"] == pytest.approx(0.05 / 0.008) and not shared["muon"]


def test_adamw_groups_change_only_the_block_matrices_optimizer():
    """Lesson 11's ablation of Muon: the same groups and rates as "muon", but the block matrices
    get AdamW at learning_rate; their updates are torch.optim.AdamW's with the same settings."""
    kw = dict(muon_lr=0.03, learning_rate=0.008, embedding_lr=0.05, max_iters=20, warmup_iters=4,
              batch_size=2, eval_iters=1, weight_decay=0.1, beta1=0.8, beta2=0.95, adam_eps=1e-10)
    torch.manual_seed(0)
    model = GPT(config(**MODERN))
    groups = make_optimizer(model, TrainConfig(optimizer="adamw-groups", **kw),
                            torch.device("cpu")).param_groups
    reference = make_optimizer(model, TrainConfig(optimizer="muon", **kw),
                               torch.device("cpu")).param_groups
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(p) for p in g["params"]]
                                                              for g in reference]
    assert not any(g["muon"] for g in groups)
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0] + [g.get("lr_scale", 1.0)
                                                              for g in reference[1:]]
    # one step on the block matrices, against torch's AdamW
    hidden = groups[0]["params"]
    theirs = [nn.Parameter(p.detach().clone()) for p in hidden]
    ours_opt = MuonAdamW([{"params": hidden, "muon": groups[0]["muon"]}], lr=0.008,
                         betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    torch_opt = torch.optim.AdamW(theirs, lr=0.008, betas=(0.8, 0.95), eps=1e-10,
                                  weight_decay=0.1)
    step_together(ours_opt, torch_opt, hidden, theirs)
    for p, q in zip(hidden, theirs):
        assert torch.allclose(p, q, atol=1e-6)


# ----------------------------------------------------------------
# groups by module type, as they were by name

def _groups_by_name(model, optimizer):
    """make_optimizer's groups as the trainer chose them at 0f3426d, by names and dimensions
    (tensors only)."""
    if optimizer == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return [[p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]]
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    hidden = [p for name, p in named if p.dim() == 2 and ".h." in f".{name}"]
    embeddings = [p for name, p in named if name.startswith(("transformer.wte", "transformer.wpe"))]
    matrices = [p for name,
                p in named if p.dim() >= 2 and not any(p is q for q in hidden + embeddings)]
    vectors = [p for name, p in named if p.dim() < 2]
    return [g for g in (hidden, embeddings, matrices, vectors) if g]


@pytest.mark.parametrize("preset", list_presets())
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_groups_by_module_type_are_the_groups_by_name_for_every_preset(preset, optimizer):
    run = load_config(preset)
    with torch.device("meta"):  # the shapes without the memory
        model = GPT(run.gpt_config(50257 if run.tokenizer == "gpt2" else 65))
    cfg = TrainConfig(**{**run.train.to_dict(), "optimizer": optimizer})
    new = [g["params"] for g in make_optimizer(model, cfg, torch.device("cpu")).param_groups]
    old = _groups_by_name(model, optimizer)
    assert [[id(p) for p in g] for g in new] == [[id(p) for p in g] for g in old]


@pytest.mark.parametrize("kwargs",
                         [dict(), dict(MODERN, n_kv_head=1), dict(bias=True, tie_embeddings=False)])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_groups_by_module_type_are_the_groups_by_name(kwargs, optimizer):
    model = GPT(config(**kwargs))
    cfg = TrainConfig(optimizer=optimizer)
    new = [g["params"] for g in make_optimizer(model, cfg, torch.device("cpu")).param_groups]
    assert [[id(p) for p in g] for g in new] == [[id(p) for p in g]
                                                 for g in _groups_by_name(model, optimizer)]


def test_adamw_groups_keep_the_order_of_model_parameters():
    """A checkpoint's optimizer state is matched to the parameters by position: a model whose Linear
    comes before its Embedding keeps the order of model.parameters() within the decayed group."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Embedding(3, 4), nn.LayerNorm(4))
    groups = [g["params"]
              for g in make_optimizer(model, TrainConfig(), torch.device("cpu")).param_groups]
    assert [[id(p) for p in g] for g in groups] == [[id(p) for p in g]
                                                    for g in _groups_by_name(model, "adamw")]


def test_param_kinds_follow_the_module_not_the_name():
    """Renamed modules keep their kinds: an Embedding is an embedding, a norm's gain and any bias a
    vector, a Linear inside a block hidden, outside one a matrix; frozen parameters are left out."""
    model = GPT(config(bias=True, tie_embeddings=False))
    model.renamed = nn.ModuleDict({"table": nn.Embedding(3, 4), "norm": nn.LayerNorm(4),
                                   "out": nn.Linear(4, 2)})
    model.transformer.h[1].mlp.c_fc.weight.requires_grad_(False)
    kinds = {kind: {id(p) for p in ps} for kind, ps in param_kinds(model).items()}
    assert id(model.renamed.table.weight) in kinds["embedding"]
    assert {id(model.renamed.norm.weight), id(model.renamed.norm.bias),
            id(model.renamed.out.bias)} <= kinds["vector"]
    assert (id(model.renamed.out.weight) in kinds["matrix"]
            and id(model.lm_head.weight) in kinds["matrix"])
    assert id(model.transformer.h[0].attn.c_attn.weight) in kinds["hidden"]
    assert id(model.transformer.h[1].mlp.c_fc.weight) not in set().union(*kinds.values())
    assert sum(map(len, kinds.values())) == sum(1 for p in model.parameters() if p.requires_grad)


def test_make_optimizer_rejects_an_unknown_optimizer_with_the_course_error():
    cfg = TrainConfig()
    # past TrainConfig's own check, as a config edited after construction would be
    cfg.optimizer = "sgd"
    with pytest.raises(SLMError, match="unknown optimizer 'sgd'"):
        make_optimizer(GPT(config()), cfg, torch.device("cpu"))
