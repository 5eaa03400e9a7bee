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
    """Saves atomically (temporary file, then rename) and closes the figure."""
    root, extension = os.path.splitext(path)
    temporary = f"{root}.partial{extension}"
    fig.savefig(temporary, dpi=120)
    plt.close(fig)
    os.replace(temporary, path)


def write_data(path, title, xlabel, ylabel, series):
    """The numbers behind a figure, next to it as <figure>.json, so a figure can be
    checked (or re-plotted elsewhere) without reading pixels."""
    import json

    from training.record import atomic_write_text

    data = {"title": title, "xlabel": xlabel, "ylabel": ylabel,
            "series": [{key: value for key, value in line.items() if key != "style"}
                       for line in series]}
    atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(data, indent=1) + "\n")


def line_chart(path, title, xlabel, ylabel, series, *, log_y=False, vlines=(), size=(6.4, 4.2)):
    """Lines (or markers) on one axes. series: [{"label", "x", "y", "style": {...}}],
    style being matplotlib keyword arguments; vlines: [(x, label, color)]."""
    fig, axes = figure(title, xlabel, ylabel, size)
    for line in series:
        axes.plot(line["x"], line["y"], label=line["label"], **line.get("style", {}))
    for x, label, color in vlines:
        axes.axvline(x, color=color, linestyle="--", label=label)
    if log_y:
        axes.set_yscale("log")
    if series or vlines:
        axes.legend(fontsize="small")
    write_data(path, title, xlabel, ylabel, series)
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
