"""The per-run plots: accuracy.png, loss.png and lr.png, from history.csv."""

import os

from plots.style import COLORS, figure, save
from training.record import best_epoch


def _curves(history, key, title, ylabel, path, monitor):
    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = figure(title, "epoch", ylabel)
    axes.plot(epochs, [row.get(key) for row in history], color=COLORS["train"], label="train")
    if any(f"val_{key}" in row for row in history):
        axes.plot(epochs, [row.get(f"val_{key}") for row in history], color=COLORS["validation"],
                  label="validation")
    best = best_epoch(history, monitor)
    if best is not None:
        axes.axvline(best[1] + 1, color=COLORS["best"], linestyle="--",
                     label=f"best {monitor} (epoch {best[1] + 1})")
    axes.legend()
    save(fig, path)


def write_run_plots(history, run_dir, title, monitor="val_accuracy"):
    """Writes the three plots; history rows come from training.record.read_history."""
    if not history:
        return []
    paths = {name: os.path.join(run_dir, f"{name}.png") for name in ("accuracy", "loss", "lr")}
    _curves(history, "accuracy", f"{title}: accuracy", "accuracy (fraction correct)",
            paths["accuracy"], monitor)
    _curves(history, "loss", f"{title}: loss", "cross-entropy loss", paths["loss"], monitor)
    fig, axes = figure(f"{title}: learning rate", "epoch", "learning rate (at epoch start)")
    axes.plot([row["epoch"] + 1 for row in history], [row.get("lr") for row in history],
              color=COLORS["train"], marker="." if len(history) < 50 else None)
    if all(isinstance(row.get("lr"), float) and row["lr"] > 0 for row in history):
        axes.set_yscale("log")
    save(fig, paths["lr"])
    return list(paths.values())
