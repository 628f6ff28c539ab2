"""plotting.py (Agg backend, set in conftest): loss curves, the live plot outside Jupyter,
heatmaps."""

import numpy as np
import pytest
import torch

from slm_helpers.plotting import LivePlot, grid_of_axes, heatmap, in_notebook, plot_losses

HISTORY = [
    {"step": 0, "train": 4.2, "val": 4.3, "lr": 1e-3},
    {"step": 100, "train": 2.5, "val": 2.7, "lr": 1e-3},
    {"step": 200, "train": 2.0, "val": 2.3, "lr": 5e-4},
]


def test_plot_losses_draws_train_and_val():
    ax = plot_losses(HISTORY, label="char")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"char train", "char val"}
    assert list(lines["char train"].get_xdata()) == [0, 100, 200]
    assert list(lines["char train"].get_ydata()) == [4.2, 2.5, 2.0]
    assert list(lines["char val"].get_ydata()) == [4.3, 2.7, 2.3]
    assert lines["char val"].get_linestyle() == "--"
    assert ax.child_axes == []  # no tokens_per_step: no top axis
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["char train", "char val"]


def test_plot_losses_baseline_and_title():
    ax = plot_losses(HISTORY, baseline=np.log(65), title="bigram")
    assert len(ax.get_lines()) == 3
    baseline = [line for line in ax.get_lines() if line.get_label().startswith("uniform guess")]
    assert len(baseline) == 1 and baseline[0].get_label() == "uniform guess (4.17)"  # ln 65 = 4.174
    assert list(baseline[0].get_ydata()) == [np.log(65)] * 2
    assert ax.get_title() == "bigram"


def test_plot_losses_only_train():
    ax = plot_losses([{"step": 0, "train": 3.0}, {"step": 5, "train": 2.0}])
    assert [line.get_label() for line in ax.get_lines()] == ["train"]


def test_tokens_seen_axis():
    ax = plot_losses(HISTORY, tokens_per_step=64 * 256)
    assert len(ax.child_axes) == 1
    top = ax.child_axes[0]
    assert top.get_xlabel() == "tokens seen" and top.xaxis.get_label_position() == "top"
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    # steps times tokens per step
    assert np.allclose(top.get_xlim(), (low * 64 * 256, high * 64 * 256))
    # a second curve on the same axes
    plot_losses(HISTORY, tokens_per_step=64 * 256, ax=ax, label="again")
    assert len(ax.child_axes) == 1 and len(ax.get_lines()) == 4


def test_live_plot_prints_a_line_per_update_outside_a_notebook(capsys):
    assert not in_notebook()
    plot = LivePlot(tokens_per_step=100)
    assert plot.notebook is False
    plot.update([])
    for n in range(1, len(HISTORY) + 1):
        plot.update(HISTORY[:n])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "step      0: train 4.2000, val 4.3000",
        "step    100: train 2.5000, val 2.7000",
        "step    200: train 2.0000, val 2.3000",
    ]


def test_live_plot_prints_the_trainers_evaluation_line(capsys):
    """One formatter (metrics.describe) for fit's printed line and LivePlot's: perplexity and speed
    included."""
    from slm_helpers.metrics import describe

    entry = {"step": 50, "train": 2.0, "val": 2.5, "val_ppl": 12.18, "tokens_per_sec": 1234.5,
             "mfu": None}
    LivePlot().update([entry])
    assert capsys.readouterr().out == describe(entry) + "\n"
    assert describe(entry) == ("step     50: train 2.0000, val 2.5000 (perplexity 12.2), "
                               "1,234 tokens/s, MFU n/a")


def test_heatmap_labels_and_values():
    matrix = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.25, 0.25]])
    ax = heatmap(matrix, row_labels=["a", "\n"], col_labels=["x", " ", "z"], title="counts",
                 annotate=True)
    # control characters made visible
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "\\n"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", " ", "z"]
    assert np.allclose(ax.get_images()[0].get_array(), matrix.numpy())
    assert sorted(t.get_text()
                  for t in ax.texts) == sorted(["0.10", "0.90", "0.00", "0.50", "0.25", "0.25"])
    assert ax.get_title() == "counts"
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar


def test_heatmap_numeric_labels_no_colorbar():
    ax = heatmap(np.eye(3), row_labels=[0, 1, 2], colorbar=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert len(ax.figure.axes) == 1 and len(ax.texts) == 0


@pytest.mark.parametrize("n, cols, shape", [(5, 4, (2, 4)), (3, 4, (1, 3)), (8, 4, (2, 4))])
def test_grid_of_axes(n, cols, shape):
    fig, axes = grid_of_axes(n, cols=cols)
    assert len(axes) == n and all(ax.get_visible() for ax in axes)
    assert len(fig.axes) == shape[0] * shape[1]
    assert sum(not ax.get_visible() for ax in fig.axes) == shape[0] * shape[1] - n
