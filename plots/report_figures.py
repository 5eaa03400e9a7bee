"""The studies' comparison figures, from run records (and, for schedules, the recipes
report.py passes in).

Every figure goes through plots.style (line_chart, bar_chart), which also
writes the plotted numbers as <figure>.json beside the PNG.
"""

import json
import math
import os

from plots.style import COLORS, bar_chart, line_chart

LINESTYLES = ["-", "--", "-.", ":"]
CURVE_GROUPS = ("cnn_progression", "norm_comparison", "mobilenetv2_expansion", "optimizer_comparison")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"]


def representative(runs):
    """One run per experiment: a full run if any, in the papers' setting (fp32, the
    test set validating) if any, then the longest, then the first id."""
    chosen = {}
    for run in sorted(runs, key=lambda r: (r.kind != "full", (r.precision, r.validation_is_test) != ("fp32", True),
                                           -len(r.history), r.run_id)):
        chosen.setdefault(run.experiment, run)
    return chosen


def mean_percent(runs, run, key):
    """The mean of `key` over the runs averaged with `run` (its report row), in percent."""
    values = [r.metrics.get(key) for r in runs if r.group == run.group and r.metrics.get(key) is not None]
    return round(100.0 * sum(values) / len(values), 4) if values else None


def _label(run):
    notes = [note for note in (run.kind, run.precision) if note not in ("full", "fp32")]
    return run.experiment + (f" ({', '.join(notes)})" if notes else "")


def _not_full(title, plotted):
    """The title, with a second line naming the kinds of run among `plotted` that did not
    train the full recipe (their curves and points are not the papers' setting)."""
    kinds = sorted({run.kind.split(":")[0] for run in plotted if run.kind != "full"})
    return title + (f"\n(includes {', '.join(kinds)} runs, not the full recipe)" if kinds else "")


def _percent(value):
    return None if value is None else round(100.0 * value, 4)


def group_curves(chosen, out, groups):
    paths = []
    for group in CURVE_GROUPS:
        members = [chosen[name] for name in groups.get(group, ()) if name in chosen]
        if not members:
            continue
        # The papers validate on the test set; a run with --val-split held out training images.
        on_test = {run.validation_is_test for run in members}
        held = ("test" if on_test == {True} else "held-out validation" if on_test == {False}
                else "validation (test or held-out, see RESULTS.md)")
        for key, ylabel in (("val_accuracy", f"{held} accuracy (%)"),
                            ("val_loss", f"{held} cross-entropy loss")):
            series = []
            for index, run in enumerate(members):
                scale = 100.0 if key == "val_accuracy" else 1.0
                series.append({"label": _label(run), "x": [row["epoch"] + 1 for row in run.history],
                               "y": [row.get(key) * scale if row.get(key) is not None else None
                                     for row in run.history],
                               "style": {"color": PALETTE[index % len(PALETTE)]}})
            what = "accuracy" if key == "val_accuracy" else "loss"
            paths.append(line_chart(
                os.path.join(out, f"{group}_{what}.png"),
                f"{group}: validation {what} per epoch", "epoch", ylabel, series))
    return paths


def progression_bars(runs, chosen, out, experiments, groups):
    members = [name for name in groups.get("cnn_progression", ()) if name in chosen]
    if not members:
        return []
    ours = [mean_percent(runs, chosen[name], "best_test_accuracy") for name in members]
    paper = [experiments[name].paper_accuracy for name in members]
    labels = [_label(chosen[name]).replace(" (", "\n(") for name in members]
    return [bar_chart(os.path.join(out, "cnn_progression_best.png"),
                      "CNN to ResNet (paper 004): best test accuracy", "test accuracy (%)", labels,
                      [{"label": "ours (best epoch, mean over runs)", "y": ours, "color": COLORS["validation"]},
                       {"label": "paper", "y": paper, "color": COLORS["paper"]}])]


def noise_figures(runs, out):
    noisy = {}
    for run in runs:
        if run.config.get("noise_kind") is not None:
            key = (run.config["noise_kind"], run.config["noise_rate"])
            if key not in noisy or (noisy[key].kind != "full" and run.kind == "full"):
                noisy[key] = run
    if not noisy:
        return []
    paths = []
    series = []
    for index, (kind, marker) in enumerate((("symmetric", "o"), ("asymmetric", "s"), ("pair", "^"),
                                            ("uniform", "v"), ("symmetric_exact", "D"))):
        points = sorted((rate, run) for (k, rate), run in noisy.items() if k == kind)
        if not points:
            continue
        rates = [rate for rate, _ in points]
        for which, style, face in (("best", "-", None), ("final", ":", "none")):
            series.append({"label": f"{kind}, {which} epoch", "x": rates,
                           "y": [_percent(run.metrics.get(f"{which}_test_accuracy")) for _, run in points],
                           "style": {"marker": marker, "linestyle": style, "color": PALETTE[index],
                                     "markerfacecolor": face}})
    paths.append(line_chart(os.path.join(out, "noise_sweep.png"),
                            _not_full("Label noise (ResNet-C, paper 004): test accuracy against noise rate",
                                      noisy.values()),
                            "noise rate (fraction of training labels changed)", "test accuracy (%)",
                            series))
    memorisation, memorised = [], []
    for index, ((kind, rate), run) in enumerate(sorted(noisy.items())):
        if rate == 0 or "flipped_true_accuracy" not in run.history[0]:
            continue  # nothing was flipped
        memorised.append(run)
        epochs = [row["epoch"] + 1 for row in run.history]
        color = PALETTE[index % len(PALETTE)]
        memorisation.append({"label": f"{kind} {rate}: true labels", "x": epochs,
                             "y": [100 * row["flipped_true_accuracy"] for row in run.history],
                             "style": {"color": color}})
        memorisation.append({"label": f"{kind} {rate}: noisy labels", "x": epochs,
                             "y": [100 * row["flipped_noisy_accuracy"] for row in run.history],
                             "style": {"color": color, "linestyle": "--"}})
    if memorisation:
        paths.append(line_chart(
            os.path.join(out, "noise_memorisation.png"),
            _not_full("Memorisation: accuracy on the flipped training images", memorised), "epoch",
            "accuracy on flipped images (%)", memorisation))
    return paths


def resnet5m_scatter(runs, chosen, out, experiments, groups):
    rows = [name for name in groups.get("resnet5m_table", ()) if name in chosen]
    if not rows:
        return []
    params = [chosen[name].metrics["trainable_params"] / 1e6 for name in rows]
    return [line_chart(
        os.path.join(out, "resnet5m_accuracy_vs_params.png"),
        _not_full("ResNet5M (paper 001): accuracy against parameters", [chosen[name] for name in rows]),
        "trainable parameters (millions)",
        "test accuracy (%)",
        [{"label": "ours (best epoch, mean over runs)", "x": params,
          "y": [mean_percent(runs, chosen[name], "best_test_accuracy") for name in rows],
          "style": {"color": COLORS["validation"], "marker": "o", "linestyle": "none"}},
         {"label": "paper", "x": params, "y": [experiments[name].paper_accuracy for name in rows],
          "style": {"color": COLORS["paper"], "marker": "x", "linestyle": "none"}}])]


def recipe_rates(recipe):
    """The learning rate at the start of each epoch, from the recipe alone (None for
    plateau, which depends on the run)."""
    lr, schedule = recipe.optimizer.learning_rate, recipe.schedule
    if schedule.per_epoch_rate:
        return [schedule.lr_at(epoch, lr, recipe.epochs) for epoch in range(recipe.epochs)]
    rate = schedule.optimizer_rate(lr)
    if isinstance(rate, float):  # plateau: the rates depend on the run
        return None
    steps_per_epoch = math.ceil((50000 - recipe.val_split) / recipe.batch_size)
    return [float(rate(epoch * steps_per_epoch)) for epoch in range(recipe.epochs)]


def schedule_figures(out, experiments):
    """Per paper, each distinct schedule once, labelled with the experiments that use it."""
    paths = []
    papers = {}
    for recipe in experiments.values():
        papers.setdefault(recipe.paper, []).append(recipe)
    for paper, recipes in papers.items():
        distinct = {}
        for recipe in recipes:
            rates = recipe_rates(recipe)
            if rates is None:
                continue
            key = (json.dumps(recipe.schedule.to_dict(), sort_keys=True), recipe.optimizer.learning_rate,
                   recipe.batch_size, recipe.val_split)
            names, longest = distinct.get(key, ([], None))
            if longest is None or len(rates) > len(longest):
                longest = rates
            distinct[key] = (names + [recipe.name], longest)
        series = []
        for index, (names, rates) in enumerate(distinct.values()):
            label = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
            series.append({"label": label, "x": list(range(1, len(rates) + 1)), "y": rates,
                           "style": {"color": PALETTE[index % len(PALETTE)],
                                     "linestyle": LINESTYLES[index % len(LINESTYLES)]}})
        if series:
            paths.append(line_chart(os.path.join(out, f"lr_schedules_{paper}.png"),
                                    f"Learning-rate schedules, paper {paper}", "epoch",
                                    "learning rate (at epoch start)", series, log_y=True))
    return paths


def pareto_frontier(points):
    """(params, score) points -> the frontier: the best score reached at or under each
    parameter count, as a step line through the trials that raise it."""
    frontier, best = [], None
    for params, score in sorted(points):
        if best is None or score > best:
            best = score
            frontier.append((params, score))
    return frontier


def search_frontiers(searches, out):
    """Per KerasTuner search: every trained trial's score against its parameters,
    the frontier, and the budget."""
    paths = []
    for search in searches:
        trained = [(t["trainable_params"] / 1e6, 100 * t["score"]) for t in search["trials"]
                   if t["status"] == "completed" and t["score"] is not None]
        if not trained:
            continue
        frontier = pareto_frontier(trained)
        budget = search.get("budget")
        paths.append(line_chart(
            os.path.join(out, f"search_{search['search']}_frontier.png"),
            f"Search {search['search']} ({search.get('tuner', '?')}): accuracy against parameters",
            "trainable parameters (millions)", "best validation accuracy (%)",
            [{"label": "trials", "x": [p for p, _ in trained], "y": [s for _, s in trained],
              "style": {"color": COLORS["train"], "marker": "o", "linestyle": "none", "alpha": 0.6}},
             {"label": "frontier", "x": [p for p, _ in frontier], "y": [s for _, s in frontier],
              "style": {"color": COLORS["validation"], "drawstyle": "steps-post", "marker": "o"}}],
            vlines=[(budget / 1e6, f"budget {budget:,}", COLORS["best"])] if budget else ()))
    return paths


def search_scores(searches, out):
    """Per search: the best score so far by trial, and the score against each
    hyperparameter (a log axis where the search sampled it on one)."""
    paths = []
    ylabel = "best validation accuracy (%)"
    for search in searches:
        name = search["search"]
        trained = sorted((t for t in search["trials"]
                          if t["status"] == "completed" and t["score"] is not None),
                         key=lambda t: int(t["trial_id"]))
        if not trained:
            continue
        best, running = [], None
        for trial in trained:
            running = max(running or 0.0, 100 * trial["score"])
            best.append(running)
        order = list(range(1, len(trained) + 1))
        paths.append(line_chart(
            os.path.join(out, f"search_{name}_best_so_far.png"),
            f"Search {name}: best score so far", "trials finished", ylabel,
            [{"label": "trial", "x": order, "y": [100 * t["score"] for t in trained],
              "style": {"color": COLORS["train"], "marker": "o", "linestyle": "none", "alpha": 0.6}},
             {"label": "best so far", "x": order, "y": best,
              "style": {"color": COLORS["validation"], "drawstyle": "steps-post"}}]))
        names = sorted({k for t in trained for k in t["hyperparameters"] if not k.startswith("tuner/")})
        for hp in names:
            points = [(t["hyperparameters"][hp], 100 * t["score"]) for t in trained
                      if hp in t["hyperparameters"]]
            if any(isinstance(v, (str, bool)) for v, _ in points):
                points = sorted((str(v), score) for v, score in points)
            paths.append(line_chart(
                os.path.join(out, f"search_{name}_{hp}.png"), f"Search {name}: {hp} against score",
                hp, ylabel, [{"label": "trials", "x": [v for v, _ in points],
                              "y": [score for _, score in points],
                              "style": {"color": COLORS["train"], "marker": "o",
                                        "linestyle": "none"}}],
                log_x=hp in search.get("log_scale", ())))
    return paths


def write_figures(runs, out, experiments, groups, searches=()):
    """Every figure; `experiments` and `groups` are the recipes and groups by name
    (experiments.recipes), which give the papers' numbers and the studies' members."""
    chosen = representative(runs)
    return (group_curves(chosen, out, groups) + progression_bars(runs, chosen, out, experiments, groups)
            + noise_figures(runs, out) + resnet5m_scatter(runs, chosen, out, experiments, groups)
            + schedule_figures(out, experiments) + search_frontiers(searches, out)
            + search_scores(searches, out))
