"""Does mixed precision learn as well as float32? Short real-data runs, side by side.

    python benchmarks/precision_accuracy.py --data-dir DIR [--experiment resnet20]
        [--precision fp32 bf16] [--seeds 0 1 2] [--epochs 6] [--train-images 20000]
        [--data-label TEXT] [--set KEY=VALUE ...]

Trains the experiment with each precision and seed through experiments/run.py
(a normal run record for each, under --output-dir, so an interrupted comparison
resumes where it stopped), then writes the test accuracy per run, the mean and
spread per precision, and each precision's distance from fp32 against the
seed-to-seed spread, to reports/precision_accuracy.{json,md}.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402
RUN = os.path.join(ROOT, "experiments", "run.py")


def run_one(args, precision, seed):
    """Trains (or finds finished) one run; returns its metrics."""
    from training import record

    run_id = f"{precision}-seed{seed}"
    run_dir = os.path.join(args.output_dir, args.experiment, run_id)
    command = [sys.executable, RUN, args.experiment, "--data-dir", args.data_dir,
               "--output-dir", args.output_dir, "--run-id", run_id, "--seed", str(seed),
               "--epochs", str(args.epochs), "--precision", precision,
               "--set", f"train_images={args.train_images}"]
    for assignment in args.set:  # e.g. a schedule compressed into the short run
        command += ["--set", assignment]
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        if not os.path.exists(os.path.join(run_dir, "config.json")):  # refused: bad data or edits
            raise SystemExit(f"error: the {run_id} run did not start (run.py says why above); "
                             f"fix that and rerun this command.")
        raise SystemExit(f"error: the {run_id} run failed; its record is in {run_dir}. "
                         f"Rerun this command to resume it.")
    metrics = record.read_json(os.path.join(run_dir, "metrics.json"))
    return {"precision": precision, "seed": seed,
            "test_accuracy": metrics["final_test_accuracy"],
            "images_per_second": metrics["train_images_per_second"],
            "train_seconds": metrics["train_seconds"]}


def summarise(runs, precisions):
    summary = {}
    for precision in precisions:
        scores = [run["test_accuracy"] for run in runs if run["precision"] == precision]
        speeds = [run["images_per_second"] for run in runs if run["precision"] == precision]
        summary[precision] = {
            "mean_test_accuracy": statistics.mean(scores),
            "stdev_test_accuracy": statistics.stdev(scores) if len(scores) > 1 else None,
            "mean_images_per_second": statistics.mean(speeds)}
    if "fp32" in summary:
        base = summary["fp32"]["mean_test_accuracy"]
        spreads = [v["stdev_test_accuracy"] for v in summary.values() if v["stdev_test_accuracy"]]
        for values in summary.values():
            values["difference_from_fp32"] = values["mean_test_accuracy"] - base
            # Within noise: the gap of the means is at most twice the larger seed-to-seed spread.
            values["within_noise"] = (abs(values["difference_from_fp32"]) <= 2 * max(spreads)
                                      if spreads else None)
    return summary


def table(result):
    lines = ["# Mixed precision against float32: test accuracy", "",
             f"{result['experiment']}, {result['epochs']} epochs on {result['train_images']:,} "
             f"training images, tested on the 10,000 test images; Keras {result['keras']} on "
             f"{result['backend']}, {result['device']}; data: {result['data_source']}; "
             f"{result['date']}."
             + (f" Recipe edits: {', '.join(result['edits'])}." if result.get("edits") else ""), "",
             ]
    lines += markdown_table(
        ["precision", "seed", "test accuracy", "train img/s"],
        [[run["precision"], run["seed"], f"{run['test_accuracy']:.4f}",
          f"{run['images_per_second']:.0f}"] for run in result["runs"]], "lrrr")
    lines.append("")
    lines += markdown_table(
        ["precision", "mean accuracy", "seed spread (stdev)", "difference from fp32",
         "within noise", "mean train img/s"],
        [[precision, f"{values['mean_test_accuracy']:.4f}",
          "-" if values["stdev_test_accuracy"] is None else f"{values['stdev_test_accuracy']:.4f}",
          f"{values.get('difference_from_fp32', 0):+.4f}", values.get("within_noise"),
          f"{values['mean_images_per_second']:.0f}"]
         for precision, values in result["summary"].items()], "lrrrlr")
    lines += ["", "Within noise: the difference of the means is at most twice the larger "
              "seed-to-seed standard deviation.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="local CIFAR-10 copy (folder or .tar.gz)")
    parser.add_argument("--experiment", default="resnet20")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--data-label", help="what the data is, for the report (default: its path)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe edit passed to every run, as run.py --set")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "runs", "precision"))
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "precision_accuracy.json"))
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.train_images < 1:
        parser.error(f"--epochs and --train-images must be >= 1; got {args.epochs}, "
                     f"{args.train_images}")
    import keras

    from training import record
    from training.machine import device_description

    runs = [run_one(args, precision, seed) for seed in args.seeds for precision in args.precision]
    config = record.read_json(os.path.join(args.output_dir, args.experiment,
                                           f"{args.precision[0]}-seed{args.seeds[0]}", "config.json"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "experiment": args.experiment,
              "epochs": args.epochs, "train_images": args.train_images, "edits": args.set,
              "backend": config["backend"], "keras": keras.__version__,
              "device": device_description(), "data_source": args.data_label or config["data_source"],
              "runs": runs, "summary": summarise(runs, args.precision)}
    write_report(args.json, result, table)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
