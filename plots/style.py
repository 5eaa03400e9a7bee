"""One look for every figure of the suite: run plots, reports and searches."""

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"train": "#1f77b4", "validation": "#d62728", "paper": "#2ca02c", "best": "#ff7f0e"}


def figure(title, xlabel, ylabel, size=(6.4, 4.2)):
    fig, axes = plt.subplots(figsize=size, constrained_layout=True)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return fig, axes


def save(fig, path):
    """Saves atomically (temporary file, then rename) and closes the figure."""
    root, extension = os.path.splitext(path)
    temporary = f"{root}.partial{extension}"
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    os.replace(temporary, path)
