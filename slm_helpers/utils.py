"""Small helpers the other modules share."""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode (no dropout), then put back the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
