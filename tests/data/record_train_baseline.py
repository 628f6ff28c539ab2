"""Run once on the ORIGINAL trainer (commit 0f3426d): record the losses of tiny runs of several
recipes and write a checkpoint in that trainer's format. tests/test_train.py checks the refactored
trainer against both:

    python tests/data/record_train_baseline.py tests/data/train_baseline_0f3426d.json
    tests/data/checkpoint_0f3426d.pt
"""

import json
import sys
import tempfile
from pathlib import Path

import torch

from slm_helpers.checkpoint import save_checkpoint
from slm_helpers.device import seed_everything
from slm_helpers.model import GPT, GPTConfig
from slm_helpers.tokenizers import CharTokenizer
from slm_helpers.train import TrainConfig, Trainer

POEM = ("Twinkle, twinkle, little star,\nHow I wonder what you are!\nUp above the world so high,\n"
        "Like a diamond in the sky.\n\n") * 20
RECIPES = {
    "adamw": {},
    "adamw_accum_dropout": {"grad_accum": 2, "dropout": 0.1},
    "muon_wsd": {"optimizer": "muon", "schedule": "wsd", "embedding_lr": 0.005},
    "bf16_noclip": {"dtype": "bfloat16", "grad_clip": 0.0},
    "modern": {"modern": True},
}

def make(recipe, out_dir=None):
    recipe = dict(recipe)
    dropout = recipe.pop("dropout", 0.0)
    modern = recipe.pop("modern", False)
    tok = CharTokenizer.from_text(POEM)
    data = torch.tensor(tok.encode(POEM))
    n = int(0.9 * len(data))
    seed_everything(0)
    extra = dict(norm="rmsnorm", position="rope", mlp="swiglu", qk_norm=True, tie_embeddings=False,
                 n_kv_head=1)
    extra = extra if modern else {}
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16,
                          dropout=dropout, **extra))
    cfg = TrainConfig(**{**dict(max_iters=6, batch_size=4, learning_rate=1e-2, min_lr=1e-3,
                                warmup_iters=1,
                                eval_interval=3, eval_iters=2, seed=7), **recipe})
    return Trainer(model, data[:n], data[n:], cfg, tokenizer=tok, out_dir=out_dir)

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = {}
    for name, recipe in RECIPES.items():
        t = make(recipe)
        hist = t.fit(progress=False)
        history = [{k: h[k] for k in ("step", "train", "val", "lr")} for h in hist]
        out[name] = {"step_losses": t.step_losses, "history": history}
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
    # an old checkpoint: 3 of 6 steps of the adamw recipe (last.pt after the step-3 evaluation)
    with tempfile.TemporaryDirectory() as d:
        t = make(RECIPES["adamw"], out_dir=d)
        t.fit(3, progress=False)
        state = torch.load(Path(d) / "last.pt", weights_only=True)
        save_checkpoint(state, sys.argv[2])
