"""The per-run plots: accuracy.png, loss.png and lr.png, from history.csv.
Accuracy is in percent, as the reports give it, with the paper's number as a line."""

import math
import os

from plots.style import COLORS, line_chart
from training.record import best_epoch


def _curves(history, key, title, ylabel, path, monitor, labels, scale=1.0, hlines=(), log_y=False):
    epochs = [row["epoch"] + 1 for row in history]

    def values(column):
        return [row[column] * scale if isinstance(row.get(column), float) else row.get(column)
                for row in history]

    series = [{"label": labels[0], "x": epochs, "y": values(key),
               "style": {"color": COLORS["train"]}}]
    if any(f"val_{key}" in row for row in history):
        series.append({"label": labels[1], "x": epochs, "y": values(f"val_{key}"),
                       "style": {"color": COLORS["validation"]}})
    best = best_epoch(history, monitor)
    vlines = [(best[1] + 1, f"best {monitor} (epoch {best[1] + 1})", COLORS["best"])] if best else []
    line_chart(path, title, "epoch", ylabel, series, vlines=vlines, hlines=hlines, log_y=log_y)


def _spread(history):
    """Whether the losses plotted span more than 10x (then a log axis shows both)."""
    losses = [row[key] for row in history for key in ("loss", "val_loss")
              if isinstance(row.get(key), float) and math.isfinite(row[key]) and row[key] > 0]
    return bool(losses) and max(losses) > 10 * min(losses)


def write_run_plots(history, run_dir, title, monitor="val_accuracy", labels=("train", "validation"),
                    paper_accuracy=None):
    """Writes the three plots; history rows come from training.record.read_history;
    labels: the legend's (train, validation) names, which say against what each was
    scored; paper_accuracy (percent) is drawn as a horizontal line."""
    if not history:
        return []
    paths = {name: os.path.join(run_dir, f"{name}.png") for name in ("accuracy", "loss", "lr")}
    paper = [(paper_accuracy, f"paper ({paper_accuracy:.2f}%)", COLORS["paper"])] \
        if paper_accuracy is not None else []
    _curves(history, "accuracy", f"{title}: accuracy", "accuracy (%)", paths["accuracy"],
            monitor, labels, scale=100.0, hlines=paper)
    _curves(history, "loss", f"{title}: loss", "cross-entropy loss", paths["loss"], monitor, labels,
            log_y=_spread(history))
    rates = [row.get("lr") for row in history]
    line_chart(paths["lr"], f"{title}: learning rate", "epoch", "learning rate (at epoch start)",
               [{"label": "learning rate", "x": [row["epoch"] + 1 for row in history], "y": rates,
                 "style": {"color": COLORS["train"], "marker": "." if len(history) < 50 else None}}],
               log_y=all(isinstance(rate, float) and rate > 0 for rate in rates))
    return list(paths.values())


def plot_run(run_dir):
    """The three plots of a finished run, from its record alone (config.json,
    metrics.json, history.csv); the legends say what each curve was scored against."""
    from training import record

    config = record.read_json(os.path.join(run_dir, record.CONFIG))
    metrics = record.read_json(os.path.join(run_dir, record.METRICS))
    recipe = config["recipe"]
    # The training curves are scored against what trained: mixed or noisy labels.
    against = [note for note, applies in (
        ("on mixup batches", recipe.get("mixup") and recipe["mixup"].get("p", 1.0) > 0),
        ("noisy labels", recipe.get("noise") and recipe["noise"].get("rate", 0) > 0)) if applies]
    labels = ("train" + (f" ({', '.join(against)})" if against else ""),
              "validation (test set)" if metrics.get("validation_is_test", True)
              else "validation (held out)")
    title = config["experiment"] + (" (quick)" if config.get("quick") else "")
    return write_run_plots(record.read_history(os.path.join(run_dir, record.HISTORY)), run_dir,
                           title, recipe.get("monitor", "val_accuracy"), labels,
                           metrics.get("paper_accuracy"))
