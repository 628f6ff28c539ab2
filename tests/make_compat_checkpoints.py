"""Write tests/data/checkpoints/: one tiny checkpoint per architecture the presets and lessons use,
with the logits the code that wrote it gave. Written once, by the code of commit 997d4bd (before the
model/Trainer redesign), with:  git worktree add /tmp/old 997d4bd && python
tests/make_compat_checkpoints.py /tmp/old tests/test_checkpoint_compat.py loads them with today's
code and checks the logits."""

import dataclasses
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "checkpoints"
ARCHITECTURES = {  # name -> changes to GPT-2's defaults
    "gpt2": {},
    "gpt2-padded": {"vocab_multiple": 64},
    "gpt2-bias": {"bias": True},
    "modern-relu2": {"norm": "rmsnorm", "position": "rope", "mlp": "relu2", "qk_norm": True,
                     "tie_embeddings": False, "init": "zero-out"},
    "llama-swiglu-gqa": {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "n_kv_head": 2},
}


def main(code: str) -> None:
    sys.path.insert(0, code)
    import torch

    from slm_helpers.checkpoint import save_checkpoint
    from slm_helpers.model import GPT, GPTConfig
    from slm_helpers.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ,.\n")
    base = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=16,
                     dropout=0.0)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, changes in ARCHITECTURES.items():
        config = dataclasses.replace(base, **changes)
        torch.manual_seed(0)
        model = GPT(config).eval()
        for p in model.parameters():  # away from the init, so that zero-initialised parts count too
            p.data.add_(0.05 * torch.randn_like(p))
        idx = torch.randint(0, tokenizer.vocab_size, (2, 16),
                            generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(idx)[0]
        save_checkpoint({"model": model.state_dict(), "model_config": config.to_dict(), "step": 0,
                         "tokenizer": tokenizer.to_dict(),
                         "reference": {"idx": idx, "logits": logits}},
                        OUT / f"{name}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
