"""Copy finished run records, without weights or backups, into a folder to commit.

    python experiments/collect.py ~/runs                # every completed run -> results/
    python experiments/collect.py ~/runs --to results cnn_baseline norm_batch
    python experiments/collect.py --search ~/searches/cnn_regularization   # -> results/searches/

A record is config.json, status.json, history.csv, metrics.json and the run
plots with their .json, drawn again from the record by the current code so that
all committed plots look alike; best.keras, model.keras, head.keras, noise.npz
and backup/ stay where they are. Unfinished runs are named and left out; the
report refuses them anyway.

A search (tune.py's folder) is copied as its oracle, its settings, results.json,
best_command.txt and each trial's KerasTuner record and run record (the files
above but the plots), so that report.py regenerates its section from them alone.
"""

import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from plots.run_plots import plot_run  # noqa: E402
from training import record  # noqa: E402

RECORD_FILES = record.RECORD  # the run folder's layout: training/record.py


def collect(runs_dir, target, experiments=()):
    """Copies each completed record under runs_dir into target; returns (copied, skipped)."""
    copied, skipped = [], []
    for experiment in sorted(os.listdir(runs_dir)):
        folder = os.path.join(runs_dir, experiment)
        if not os.path.isdir(folder) or (experiments and experiment not in experiments):
            continue
        for run_id in sorted(os.listdir(folder)):
            source = os.path.join(folder, run_id)
            if not os.path.isdir(source):
                continue
            status = (record.read_status(source) or {}).get("status", "missing")
            if status != "completed":
                skipped.append(f"{experiment}/{run_id} ({status})")
                continue
            destination = os.path.join(target, experiment, run_id)
            os.makedirs(destination, exist_ok=True)
            for name in RECORD_FILES:
                if os.path.exists(os.path.join(source, name)):
                    shutil.copy2(os.path.join(source, name), os.path.join(destination, name))
            plot_run(destination)
            copied.append(f"{experiment}/{run_id}")
    return copied, skipped


SEARCH_FILES = ("search.json", "oracle.json", "results.json", "best_command.txt")
TRIAL_RUN_FILES = (record.CONFIG, record.STATUS, record.HISTORY, record.METRICS, "trial.json")


def collect_search(source, target):
    """Copies a search folder's records (no weights, no plots) to target; returns
    the number of trials copied."""
    if not os.path.exists(os.path.join(source, "results.json")):
        raise FileNotFoundError(f"{source} holds no results.json; pass the folder tune.py "
                                f"wrote (<directory>/<search>)")
    os.makedirs(target, exist_ok=True)
    names = [n for n in SEARCH_FILES if os.path.exists(os.path.join(source, n))]
    names += [n for n in sorted(os.listdir(source)) if n.startswith("tuner") and n.endswith(".json")]
    for name in names:
        shutil.copy2(os.path.join(source, name), os.path.join(target, name))
    trials = 0
    for name in sorted(os.listdir(source)):
        if name.startswith("trial_") and os.path.exists(os.path.join(source, name, "trial.json")):
            os.makedirs(os.path.join(target, name), exist_ok=True)
            shutil.copy2(os.path.join(source, name, "trial.json"), os.path.join(target, name))
            trials += 1
    runs = os.path.join(source, "runs")
    for base in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        for run_id in sorted(os.listdir(os.path.join(runs, base))):
            destination = os.path.join(target, "runs", base, run_id)
            os.makedirs(destination, exist_ok=True)
            for name in TRIAL_RUN_FILES:
                if os.path.exists(os.path.join(runs, base, run_id, name)):
                    shutil.copy2(os.path.join(runs, base, run_id, name), destination)
    return trials


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", help="folder of run records (run.py's --output-dir)")
    parser.add_argument("--search", metavar="FOLDER",
                        help="copy this tune.py search folder to <--to>/searches/<its name>")
    parser.add_argument("experiments", nargs="*", help="only these experiments (default all)")
    parser.add_argument("--to", default=os.path.join(ROOT, "results"),
                        help="where the records go (default the repository's results/)")
    args = parser.parse_args(argv)
    if args.search:
        name = os.path.basename(os.path.normpath(args.search))
        target = os.path.join(args.to, "searches", name)
        try:
            trials = collect_search(args.search, target)
        except OSError as error:
            parser.error(str(error))
        print(f"{trials} trials of {name} -> {target}")
        return 0
    if args.runs is None:
        parser.error("name the folder of run records, or a search with --search FOLDER")
    if not os.path.isdir(args.runs):
        parser.error(f"{args.runs}: no such folder; pass the --output-dir run.py wrote to.")
    copied, skipped = collect(args.runs, args.to, set(args.experiments))
    for name in skipped:
        print(f"not finished, left out: {name}")
    print(f"{len(copied)} records -> {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
