"""One look for every figure of the suite: run plots, reports and searches."""

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = {"train": "#1f77b4", "validation": "#d62728", "paper": "#2ca02c", "best": "#ff7f0e"}


def figure(title, xlabel, ylabel, size=(6.4, 4.2)):
    fig, axes = plt.subplots(figsize=size, constrained_layout=True)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if xlabel == "epoch":  # no ticks between epochs (1.2, 1.4, ...) on short runs
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig, axes


def save(fig, path):
    """Saves atomically and closes the figure."""
    from foundation.files import atomic_file

    try:
        atomic_file(path, lambda temporary: fig.savefig(temporary, dpi=120))
    finally:
        plt.close(fig)


def write_data(path, title, xlabel, ylabel, series, **axes):
    """The numbers behind a figure, next to it as <figure>.json, so a figure can be
    checked (or re-plotted elsewhere) without reading pixels; `axes` adds facts such
    as xscale="log"."""
    import json

    from foundation.files import atomic_write_text

    data = {"title": title, "xlabel": xlabel, "ylabel": ylabel, **axes,
            "series": [{key: value for key, value in line.items() if key != "style"}
                       for line in series]}
    atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(data, indent=1) + "\n")


def line_chart(path, title, xlabel, ylabel, series, *, log_y=False, log_x=False, vlines=(),
               hlines=(), size=(6.4, 4.2)):
    """Lines (or markers) on one axes. series: [{"label", "x", "y", "style": {...}}],
    style being matplotlib keyword arguments; vlines and hlines: [(x or y, label, color)]."""
    fig, axes = figure(title, xlabel, ylabel, size)
    for line in series:
        axes.plot(line["x"], line["y"], label=line["label"], **line.get("style", {}))
    for x, label, color in vlines:
        axes.axvline(x, color=color, linestyle="--", label=label)
    for y, label, color in hlines:
        axes.axhline(y, color=color, linestyle=":", label=label)
    if log_y:
        axes.set_yscale("log")
    if log_x:
        axes.set_xscale("log")
    if series or vlines or hlines:
        axes.legend(fontsize="small")
    write_data(path, title, xlabel, ylabel, series, xscale="log" if log_x else "linear",
               yscale="log" if log_y else "linear")
    save(fig, path)
    return path


def bar_chart(path, title, ylabel, categories, bars, size=(8.0, 4.5)):
    """Grouped bars: bars = [{"label", "y": one value per category (None: no bar), "color"}]."""
    fig, axes = figure(title, "", ylabel, size)
    width = 0.8 / max(len(bars), 1)
    for index, bar in enumerate(bars):
        positions = [i + (index - (len(bars) - 1) / 2) * width for i in range(len(categories))]
        heights = [value if value is not None else 0.0 for value in bar["y"]]
        drawn = axes.bar(positions, heights, width, label=bar["label"], color=bar.get("color"))
        for rectangle, value in zip(drawn, bar["y"]):
            if value is None:
                rectangle.set_visible(False)
            else:
                axes.annotate(f"{value:.2f}", (rectangle.get_x() + rectangle.get_width() / 2, value),
                              ha="center", va="bottom", fontsize="x-small")
    axes.set_xticks(range(len(categories)))
    axes.set_xticklabels(categories, rotation=30, ha="right")
    axes.legend(fontsize="small")
    write_data(path, title, "", ylabel,
               [{"label": bar["label"], "x": list(categories), "y": list(bar["y"])} for bar in bars])
    save(fig, path)
    return path


def heatmap(path, title, xlabel, ylabel, labels, matrix, size=(7.0, 6.0)):
    """A square matrix (a confusion matrix: rows true, columns predicted) with its
    values written in the cells where there are few enough of them to read."""
    import numpy as np

    matrix = np.asarray(matrix)
    fig, axes = figure(title, xlabel, ylabel, size)
    axes.grid(False)
    image = axes.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=axes, shrink=0.8)
    if len(labels) <= 20:
        axes.set_xticks(range(len(labels)))
        axes.set_xticklabels(labels, rotation=60, ha="right", fontsize="small")
        axes.set_yticks(range(len(labels)))
        axes.set_yticklabels(labels, fontsize="small")
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), value in np.ndenumerate(matrix):
            axes.text(column, row, f"{value:g}", ha="center", va="center", fontsize="x-small",
                      color="white" if value > threshold else "black")
    write_data(path, title, xlabel, ylabel,
               [{"label": name, "x": list(labels), "y": matrix[index].tolist()}
                for index, name in enumerate(labels)])
    save(fig, path)
    return path
