"""Wall time of full training epochs through `experiments/run.py`, per number of
input threads.

    python benchmarks/epochs.py --data-dir DIR [--models modified_resnet resnet_deep]
        [--input-threads 1 8] [--augment-on host device] [--epochs 2] [--precision fp32] [--set KEY=VALUE] [--json OUT]

Each (network, input threads) pair is one `run.py NAME --epochs N` in a child
process on the current backend (KERAS_BACKEND), on the full training set with
the test set as validation, in a temporary folder. The first epoch includes
tracing and compilation; the later ones are the steady state. Writes JSON and a
markdown table (reports/epochs_benchmark.{json,md} by default).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402

from training import record  # noqa: E402

RUN = os.path.join(ROOT, "experiments", "run.py")


def run_epochs(experiment, threads, args, folder, path="auto"):
    """One run.py run; its history rows as numbers."""
    run_id = f"threads{threads}-{path}"
    command = [sys.executable, RUN, experiment, "--epochs", str(args.epochs),
               "--input-threads", str(threads), "--precision", args.precision,
               "--augment-on", path, "--output-dir", folder, "--run-id", run_id]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    for edit in args.set:
        command += ["--set", edit]
    started = time.perf_counter()
    child = subprocess.run(command)
    process_seconds = time.perf_counter() - started  # imports, data, compilation, epochs
    if child.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (exit {child.returncode}); "
                         "see its messages above.")
    run_dir = os.path.join(folder, experiment, run_id)
    rows = record.read_history(os.path.join(run_dir, "history.csv"))
    config = record.read_json(os.path.join(run_dir, "config.json"))
    metrics = record.read_json(os.path.join(run_dir, "metrics.json"))
    return {"experiment": experiment, "input_threads": threads,
            "batch_size": config["recipe"]["batch_size"], "precision": args.precision,
            "train_images": config.get("train_images"), "validation": config.get("validation"),
            "set": list(args.set), "process_seconds": process_seconds,
            "augment_on": config.get("augment_on", "host"),
            "trainable_params": metrics.get("trainable_params"),
            "device": config.get("device"), "backend": config["backend"],
            "versions": config.get("versions"),
            "epochs": [{"epoch": row["epoch"] + 1, "seconds": row["seconds"],
                        "input_seconds": row["input_seconds"]} for row in rows]}


def table(result):
    cases = result["cases"]
    first = cases[0]
    versions = first.get("versions") or {}
    lines = ["# Full epochs", "",
             f"Wall time of full epochs through experiments/run.py (the training images, then "
             f"the validation: {first.get('validation') or 'the test set'}) on the "
             f"{first['backend']} backend, "
             f"{first['device']}, Keras {versions.get('keras', '?')}, {first['precision']}, "
             f"{result['cpu_count']} CPU cores; {result['date']}. Input seconds are the time "
             "spent building training batches, summed over the input threads."
             + (f" Data: {result['data_note']}." if result.get("data_note") else ""), "",
             ]
    rows = []
    for case in cases:
        epochs = case["epochs"]
        later = epochs[1:] or epochs
        seconds = sum(row["seconds"] for row in later) / len(later)
        inputs = sum(row["input_seconds"] for row in later) / len(later)
        params = f" ({case['trainable_params']:,})" if case.get("trainable_params") else ""
        rows.append([f"{case['experiment']}{params}", case["batch_size"],
                     f"{case['train_images']:,}", case["input_threads"],
                     case.get("augment_on", "host"),
                     f"{epochs[0]['seconds']:.1f}", f"{seconds:.1f}", f"{inputs:.1f}"])
    lines += markdown_table(["network", "batch", "training images", "input threads",
                             "augmentation on", "epoch 1 s (with compilation)", "later epochs s",
                             "input s a later epoch"], rows, "lrrrlrrr")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["modified_resnet", "resnet_deep"])
    parser.add_argument("--input-threads", nargs="+", type=int, default=[1, 0],
                        help="input thread counts to compare (0: run.py's default)")
    parser.add_argument("--augment-on", nargs="+", default=["auto"],
                        choices=("auto", "host", "device"),
                        help="augmentation paths to compare (run.py --augment-on)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--data-dir", help="local CIFAR copy, as run.py takes it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe edit passed to run.py, e.g. train_images=1024")
    parser.add_argument("--data-note", default="", help="what the data is, for the table")
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "epochs_benchmark.json"))
    args = parser.parse_args(argv)
    if args.epochs < 1 or min(args.input_threads) < 0:
        parser.error(f"--epochs must be >= 1 and --input-threads >= 0; got {args.epochs}, "
                     f"{args.input_threads}")
    from data.pipeline import input_threads
    from experiments.recipes import EXPERIMENTS

    unknown = [name for name in args.models if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; see python experiments/run.py --list")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_count": os.cpu_count(),
              "data_note": args.data_note, "cases": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for experiment in args.models:
            for threads, path in [(t, p) for t in args.input_threads for p in args.augment_on]:
                case = run_epochs(experiment, input_threads(threads), args, folder, path)
                result["cases"].append(case)
                print(f"{experiment} input threads {case['input_threads']}, augmentation on "
                      f"{case['augment_on']}: "
                      + ", ".join(f"{row['seconds']:.1f} s" for row in case["epochs"]), flush=True)
                write_report(args.json, result, table)  # after each case: a killed run keeps them
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
