"""A search's folder, <directory>/<search>/: KerasTuner's project files, the trials'
run records under runs/, and the outputs drawn from those files alone
(results.json, best.keras, best_command.txt, the plots)."""

import os
import shutil

from experiments.searches import SEARCHES
from foundation import files

FATAL_EXIT = 3  # a trial process that stopped on bad data, a bad recipe or a run error


def search_dir(args):
    return os.path.join(args.directory, args.search)


def trial_edits(args):
    """The edits every trial of this search gets: its selection subset, then --set."""
    return list(SEARCHES[args.search].subset) + list(args.set)


def collect_results(args):
    """Every trial from KerasTuner's project files joined with its run record."""
    from training import record

    folder = search_dir(args)
    search = SEARCHES[args.search]
    trials = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, "trial.json")
        if not (name.startswith("trial_") and os.path.exists(path)):
            continue
        saved = record.read_json(path)
        trial_id = saved["trial_id"]
        run_dir = os.path.join(folder, "runs", search.base, f"trial_{trial_id}")
        info = record.read_json(os.path.join(run_dir, "trial.json")) if os.path.exists(
            os.path.join(run_dir, "trial.json")) else {}
        metrics = record.read_json(os.path.join(run_dir, record.METRICS)) if os.path.exists(
            os.path.join(run_dir, record.METRICS)) else {}
        config = record.read_json(os.path.join(run_dir, record.CONFIG)) if os.path.exists(
            os.path.join(run_dir, record.CONFIG)) else {}
        status = info.get("status") or saved.get("status", "").lower()
        if saved.get("status") in ("FAILED", "INVALID"):
            status = "failed"
        trials.append({
            "trial_id": trial_id,
            "hyperparameters": {k: v for k, v in saved["hyperparameters"]["values"].items()},
            "score": saved.get("score") if status == "completed" else None,
            "trainable_params": info.get("trainable_params"),
            "epochs": metrics.get("epochs_run"),
            "seconds": metrics.get("train_seconds"),
            "status": status,
            "edits": info.get("edits", []),
            "reason": info.get("reason"),  # why a trial failed
            "earlier_failure": info.get("earlier_failure"),  # a failure its retry overcame
            "resident_mb": info.get("resident_mb"),  # the trial process's peak
            "process": info.get("process"),  # the trial process's id
            "search_resident_mb": info.get("search_resident_mb"),  # the search's, after it
            "device": config.get("device"),
            "backend": config.get("backend"),
            "run_dir": os.path.relpath(run_dir, folder),  # the folder moves whole (collect.py)
        })
    return trials


# What a search folder was made with: a rerun with other values would mix trials of
# two searches (quick trials under a full search, a random oracle reloaded as bayesian).
SETTINGS = ("tuner", "quick", "epochs", "set", "seed")


def check_settings(args):
    """Records this search's settings in <folder>/search.json, or refuses a folder
    whose trials were made with others; returns an error message or None."""
    from training import record

    path = os.path.join(search_dir(args), "search.json")
    wanted = {"tuner": args.tuner, "quick": args.quick, "epochs": args.epochs,
              "set": list(args.set), "seed": args.seed}
    if os.path.exists(path):
        saved = record.read_json(path)
        changed = [f"{key}: {saved.get(key)!r} -> {wanted[key]!r}" for key in SETTINGS
                   if saved.get(key) != wanted[key]]
        if changed:
            return (f"{search_dir(args)} holds a search made with other settings "
                    f"({'; '.join(changed)}). Pass --directory with another folder, or "
                    f"--overwrite to delete its trials and start over.")
    record.write_json(path, wanted)
    return None


def log_sampled(args):
    """The names of the search's hyperparameters sampled on a log scale."""
    from training import record

    folder = search_dir(args)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, "trial.json")
        if name.startswith("trial_") and os.path.exists(path):
            space = record.read_json(path).get("hyperparameters", {}).get("space", [])
            return {entry["config"]["name"] for entry in space
                    if entry.get("config", {}).get("sampling") == "log"}
    return set()


def write_outputs(args):
    """results.json, best.keras, best_command.txt and the plots, from the files alone."""
    from plots.style import COLORS, line_chart
    from training import record

    folder = search_dir(args)
    search = SEARCHES[args.search]
    trials = collect_results(args)
    record.write_json(os.path.join(folder, "results.json"),
                      {"search": args.search, "base": search.base, "tuner": args.tuner,
                       "budget": search.budget, "quick": args.quick,
                       "subset": trial_edits(args), "max_epochs": args.epochs,
                       "log_scale": sorted(log_sampled(args)), "trials": trials})
    completed = [t for t in trials if t["status"] == "completed" and t["score"] is not None]
    if not completed:
        return None
    best = max(completed, key=lambda t: t["score"])
    source = os.path.join(folder, best["run_dir"], record.BEST)
    if os.path.exists(source):
        files.atomic_file(os.path.join(folder, record.BEST),
                          lambda temporary: shutil.copyfile(source, temporary))
    command = "python experiments/run.py " + search.base + "".join(
        f" --set '{edit}'" for edit in list(args.set) + best["edits"]
        if not edit.startswith("epochs="))
    record.atomic_write_text(os.path.join(folder, "best_command.txt"), command + "\n")
    order = sorted(completed, key=lambda t: int(t["trial_id"]) if t["trial_id"].isdigit() else 0)
    ylabel = "best validation accuracy (%)"  # in percent, as the report's figures
    quick = " (quick trials)" if args.quick else ""
    line_chart(os.path.join(folder, "score_by_trial.png"), f"{args.search}: score by trial{quick}",
               "trial", ylabel,
               [{"label": "trial", "x": [t["trial_id"] for t in order],
                 "y": [100 * t["score"] for t in order],
                 "style": {"marker": "o", "linestyle": "none", "color": COLORS["validation"]}}])
    line_chart(os.path.join(folder, "accuracy_vs_params.png"),
               f"{args.search}: accuracy against parameters{quick}"
               + (f"\n(budget {search.budget:,})" if search.budget else ""),
               "trainable parameters (millions)", ylabel,
               [{"label": "trials", "x": [t["trainable_params"] / 1e6 for t in completed],
                 "y": [100 * t["score"] for t in completed],
                 "style": {"marker": "o", "linestyle": "none", "color": COLORS["train"]}}],
               vlines=[(search.budget / 1e6, "budget", COLORS["best"])] if search.budget else ())
    names = sorted({k for t in completed for k in t["hyperparameters"] if not k.startswith("tuner/")})
    logarithmic = log_sampled(args)
    for name in names:
        points = [(t["hyperparameters"][name], t["score"]) for t in completed
                  if name in t["hyperparameters"]]
        x = [str(v) if isinstance(v, (str, bool)) else v for v, _ in points]
        line_chart(os.path.join(folder, f"hp_{name}.png"),
                   f"{args.search}: {name} against score{quick}", name, ylabel,
                   [{"label": "trials", "x": x, "y": [100 * s for _, s in points],
                     "style": {"marker": "o", "linestyle": "none", "color": COLORS["train"]}}],
                   log_x=name in logarithmic)
    return best
