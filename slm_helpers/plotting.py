"""Pictures of the course: loss curves (live while training), heatmaps of counts and attention."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab, nbval), where figures can redraw in
    place."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def plot_losses(history: list[dict], *, tokens_per_step: int | None = None, ax=None,
                title: str | None = None, baseline: float | None = None, label: str = ""):
    """Train and validation loss against steps, with tokens seen on the top axis.

    ``history`` holds one dict per evaluation: ``{"step": 100, "train": 2.3, "val": 2.4}``.
    ``baseline`` draws a dashed reference line (for example ln(vocab size): a model that guesses
    uniformly).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    prefix = f"{label} " if label else ""
    for split, style in (("train", "-"), ("val", "--")):
        if history and split in history[0]:
            ax.plot(steps, [h[split] for h in history], style, label=f"{prefix}{split}")
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", label=f"uniform guess ({baseline:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    if tokens_per_step and not any(a.get_label() == "tokens seen" for a in ax.child_axes):
        top = ax.secondary_xaxis("top",
                                 functions=(lambda s: s * tokens_per_step,
                                            lambda t: t / tokens_per_step))
        top.set_label("tokens seen")
        top.set_xlabel("tokens seen")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


class LivePlot:
    """A loss plot that redraws in place during training in Jupyter; elsewhere, a printed line per
    update."""

    def __init__(self, *, tokens_per_step: int | None = None, title: str | None = None,
                 baseline: float | None = None):
        self.tokens_per_step, self.title, self.baseline = tokens_per_step, title, baseline
        self.notebook = in_notebook()
        self._handle = None

    def update(self, history: list[dict]) -> None:
        if not history:
            return
        if not self.notebook:
            from .metrics import describe

            print(describe(history[-1]))
            return
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(7, 4))
        plot_losses(history, tokens_per_step=self.tokens_per_step, ax=ax, title=self.title,
                    baseline=self.baseline)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # the inline backend would otherwise draw it a second time


def plot_metrics(run, *, ax=None, title: str | None = None):
    """Redraw a run's loss curves from its ``metrics.jsonl`` (``run``: that file or the run's
    folder): the training loss of every logged step, faint, under the evaluated train and val
    losses."""
    from .metrics import read_metrics

    records = read_metrics(run)
    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r for r in records if r["kind"] == "train"]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="grey", alpha=0.4,
                lw=1,
                label="train (each logged step)")
    later = [r for r in evals if r["step"] > 0]
    tokens_per_step = later[0]["tokens"] // later[0]["step"] if later else None
    return plot_losses(evals, tokens_per_step=tokens_per_step, ax=ax, title=title)


def heatmap(matrix, *, row_labels=None, col_labels=None, ax=None, title: str | None = None,
            cmap: str = "Blues", annotate: bool = False, fmt: str = "{:.2f}",
            colorbar: bool = True):
    """Draw a matrix as a coloured grid, labelled by tokens (counts, probabilities, attention
    weights)."""
    import numpy as np

    matrix = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix)
    if ax is None:
        size = min(12, max(3, 0.45 * max(matrix.shape)))
        _, ax = plt.subplots(figsize=(size * 1.15, size))
    image = ax.imshow(matrix, cmap=cmap)
    for labels, set_ticks, set_labels in ((row_labels, ax.set_yticks, ax.set_yticklabels),
                                          (col_labels, ax.set_xticks, ax.set_xticklabels)):
        if labels is not None:
            set_ticks(range(len(labels)))
            set_labels([repr(t)[1:-1] if isinstance(t, str) else t for t in labels],
                       fontsize=8 if len(labels) > 20 else 10)
    if annotate:
        threshold = matrix.max() / 2
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def grid_of_axes(n: int, *, cols: int = 4, size: float = 3.0):
    """A figure with ``n`` square panels (for one picture per head or per layer); spare panels
    hidden."""
    rows = math.ceil(n / cols)
    cols = min(cols, n)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
