"""The per-run plots: accuracy.png, loss.png and lr.png, from history.csv."""

import os

from plots.style import COLORS, line_chart
from training.record import best_epoch


def _curves(history, key, title, ylabel, path, monitor, labels):
    epochs = [row["epoch"] + 1 for row in history]
    series = [{"label": labels[0], "x": epochs, "y": [row.get(key) for row in history],
               "style": {"color": COLORS["train"]}}]
    if any(f"val_{key}" in row for row in history):
        series.append({"label": labels[1], "x": epochs,
                       "y": [row.get(f"val_{key}") for row in history],
                       "style": {"color": COLORS["validation"]}})
    best = best_epoch(history, monitor)
    vlines = [(best[1] + 1, f"best {monitor} (epoch {best[1] + 1})", COLORS["best"])] if best else []
    line_chart(path, title, "epoch", ylabel, series, vlines=vlines)


def write_run_plots(history, run_dir, title, monitor="val_accuracy", labels=("train", "validation")):
    """Writes the three plots; history rows come from training.record.read_history;
    labels: the legend's (train, validation) names, which say against what each was scored."""
    if not history:
        return []
    paths = {name: os.path.join(run_dir, f"{name}.png") for name in ("accuracy", "loss", "lr")}
    _curves(history, "accuracy", f"{title}: accuracy", "accuracy (fraction correct)",
            paths["accuracy"], monitor, labels)
    _curves(history, "loss", f"{title}: loss", "cross-entropy loss", paths["loss"], monitor, labels)
    rates = [row.get("lr") for row in history]
    line_chart(paths["lr"], f"{title}: learning rate", "epoch", "learning rate (at epoch start)",
               [{"label": "learning rate", "x": [row["epoch"] + 1 for row in history], "y": rates,
                 "style": {"color": COLORS["train"], "marker": "." if len(history) < 50 else None}}],
               log_y=all(isinstance(rate, float) and rate > 0 for rate in rates))
    return list(paths.values())
