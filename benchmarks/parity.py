"""Paired training runs: the suite's Keras recipe against the authors' own PyTorch
loop (benchmarks/reference/), on the same images, several seeds each.

    python benchmarks/parity.py resnet20 [--epochs 4] [--train-images 5000] [--seeds 3]
        [--data-dir DIR] [--json OUT] [--lr-factor 10]

Both sides train the first N training images for E epochs and score the first
2,000 test images after every epoch and the whole test set at the end; run s of
each side uses seed s. When E is shorter than the recipe, both compress the
schedule by one rule, the whole schedule squeezed into E epochs so the rate still
goes from its start to its end: a cosine's T_max and a plateau's patience scale by
E / R (R the recipe's epochs), an exponential's gamma becomes gamma^(R / E),
one-cycle spans E epochs, iteration boundaries scale by the updates E epochs of N
images make against the recipe's. The Keras side is run.py itself (the PyTorch
backend, its run record under the output folder); the reference side is the
paper's script.

Verdict: "same within noise" when a Welch t-test of the final test accuracies
does not reject equal means at p = 0.05 and the difference of the means is at
most twice the larger of the two sides' seed standard deviations; "differs"
otherwise. --lr-factor F multiplies the Keras side's learning rate by F (a
deliberately broken recipe), to show the comparison can say "differs".

Each side's finished seed is kept under --output-dir and reused when the same
call comes again, so an interrupted case resumes at the seed it stopped in.

Writes reports/parity_<case>.json and .md and reports/figures/parity_<case>_
{accuracy,loss}.png (each with its .json). Needs PyTorch and torchvision
(requirements-bench.txt).
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time

# The Keras side trains on the PyTorch backend; TensorFlow and PyTorch's CUDA build
# (torchvision's) in one process can crash on import.
os.environ.setdefault("KERAS_BACKEND", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REFERENCE = os.path.join(ROOT, "benchmarks", "reference")
FULL_TRAIN_IMAGES = 50000


@dataclasses.dataclass(frozen=True)
class Case:
    experiment: str  # the suite's recipe
    script: str  # benchmarks/reference/<script>.py
    variant: str = None  # passed to the script (paper 001's rows)
    phase: str = None  # se_resnet_mixup: "mixup" (the 400 mixup epochs) or "crossing"
    about: str = ""


CASES = {
    "modified_resnet": Case("modified_resnet", "paper002_modified_resnet",
                            about="Adam with coupled decay, plateau on the test loss"),
    "resnet5m_row6": Case("resnet5m_row6", "paper001_resnet5m", "row6",
                          about="SGD, cosine, AutoAugment"),
    "resnet5m_row1": Case("resnet5m_row1", "paper001_resnet5m", "row1",
                          about="one-cycle per epoch, dropout, batch 32"),
    "se_resnet_mixup": Case("se_resnet_mixup", "paper003_se_resnet", phase="mixup",
                            about="the mixup phase: per-epoch gate, clipping"),
    "se_resnet_mixup_crossing": Case(
        "se_resnet_mixup", "paper003_se_resnet", phase="crossing",
        about="mixup, then its last epoch clean on the periodic cosine past T_max"),
    "mobilenetv2": Case("mobilenetv2", "paper000_mobilenetv2", about="SGD, exponential decay"),
    "resnet20": Case("resnet20", "he2015_resnet", about="iteration boundaries, option A"),
}


def reference_paper(case):
    """The `Paper` of a case's reference script, imported here (needs torch)."""
    import importlib

    if REFERENCE not in sys.path:
        sys.path.insert(0, REFERENCE)
    module = importlib.import_module(case.script)
    if case.variant:
        return module.paper(case.variant)
    return module.paper() if callable(getattr(module, "paper", None)) else module.PAPER


def compressed(recipe, case, epochs, train_images):
    """(run.py --set edits, the schedule numbers for the reference side)."""
    schedule, ratio = recipe.schedule, epochs / recipe.epochs
    edits, numbers = [], {}
    kind = schedule.kind
    if case.phase == "mixup":  # the 400 mixup epochs squeezed into E, all of them mixed
        numbers = {"t_max": float(epochs), "stop_epoch": epochs}
    elif case.phase == "crossing":  # mixup, then one clean epoch just past T_max
        numbers = {"t_max": float(epochs - 1), "stop_epoch": epochs - 1}
    elif kind == "cosine":
        numbers = {"t_max": schedule.t_max * ratio}
    elif kind == "exponential":
        numbers = {"gamma": schedule.gamma ** (recipe.epochs / epochs)}
    elif kind == "plateau":
        numbers = {"patience": max(0, round(schedule.patience * ratio))}
    elif kind == "step_iterations":
        full = recipe.epochs * math.ceil(FULL_TRAIN_IMAGES / recipe.batch_size)
        ours = epochs * math.ceil(train_images / recipe.batch_size)
        numbers = {"milestones": [max(1, round(b * ours / full)) for b in schedule.boundaries]}
        edits.append(f"schedule.boundaries={json.dumps(numbers['milestones'])}")
    elif kind != "onecycle":  # one-cycle spans the run's epochs on both sides already
        raise ValueError(f"no compression rule for schedule {kind!r}")
    if "t_max" in numbers:
        edits.append(f"schedule.t_max={numbers['t_max']}")
    if "stop_epoch" in numbers:
        edits.append(f"mixup.stop_epoch={numbers['stop_epoch']}")
    for key in ("gamma", "patience"):
        if key in numbers:
            edits.append(f"schedule.{key}={json.dumps(numbers[key])}")
    return edits, numbers


def welch(first, second):
    """(t, p) of Welch's two-sided t-test; p is 1 where both sides are constant and equal."""
    from scipy import stats

    if statistics.pstdev(first) == 0 and statistics.pstdev(second) == 0:
        return (0.0, 1.0) if statistics.fmean(first) == statistics.fmean(second) else (math.inf, 0.0)
    result = stats.ttest_ind(first, second, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def verdict(keras_values, reference_values, alpha=0.05):
    """The comparison of two sides' final accuracies, as the module docstring states it."""
    difference = statistics.fmean(keras_values) - statistics.fmean(reference_values)
    spread = max(statistics.stdev(keras_values) if len(keras_values) > 1 else 0.0,
                 statistics.stdev(reference_values) if len(reference_values) > 1 else 0.0)
    t, p = welch(keras_values, reference_values)
    same = p >= alpha and abs(difference) <= 2 * spread
    return {"verdict": "same within noise" if same else "differs", "difference": difference,
            "larger_seed_std": spread, "welch_t": t, "welch_p": p, "alpha": alpha}


def keras_side(case, recipe, args, edits, seed, out):
    """One seed of run.py on the PyTorch backend; its history and final accuracy."""
    from training import record

    run_id = f"parity-seed{seed}" + (f"-lr{args.lr_factor:g}" if args.lr_factor != 1 else "")
    sets = [f"train_images={args.train_images}", f"val_images={args.eval_images}", *edits]
    if args.lr_factor != 1:
        sets.append(f"optimizer.learning_rate={recipe.optimizer.learning_rate * args.lr_factor}")
    command = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), recipe.name,
               "--epochs", str(args.epochs), "--seed", str(seed), "--output-dir", out,
               "--run-id", run_id] + [part for edit in sets for part in ("--set", edit)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    spec, path = {"command": command[2:]}, os.path.join(out, f"keras-{run_id}.json")
    if (finished := finished_seed(path, spec)) is not None:
        return finished
    started = time.time()
    result = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "torch"},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the Keras side of {recipe.name} seed {seed} failed:\n"
                         + result.stderr[-3000:])
    run_dir = os.path.join(out, recipe.name, run_id)
    history = record.read_history(os.path.join(run_dir, "history.csv"))
    metrics = record.read_json(os.path.join(run_dir, "metrics.json"))
    config = record.read_json(os.path.join(run_dir, "config.json"))
    run = {"side": "keras", "seed": seed, "spec": spec, "command": " ".join(command[1:]),
           "history": [{"epoch": row["epoch"], "loss": row["loss"],
                        "test_accuracy": row["val_accuracy"], "lr": row["lr"]} for row in history],
           "final_test_accuracy": metrics["final_test_accuracy"],
           "seconds": time.time() - started, "parameters": metrics["trainable_params"],
           "versions": config["versions"]}
    record.write_json(path, run)
    return run


def finished_seed(path, spec):
    """A side's seed saved by an earlier call with the same spec, else None."""
    try:
        with open(path) as stream:
            run = json.load(stream)
    except (OSError, ValueError):
        return None
    return run if run.get("spec") == spec else None


def reference_spec(case, args, numbers, seed):
    """What the reference script reads (benchmarks/reference/common.py)."""
    return {"experiment": case.experiment, "variant": case.variant, "epochs": args.epochs,
            "train_images": args.train_images, "eval_images": args.eval_images, "seed": seed,
            "data_dir": args.data_dir, "schedule": numbers}


def reference_side(case, args, numbers, seed, out):
    spec = reference_spec(case, args, numbers, seed)
    path = os.path.join(out, f"reference-{case.script}-seed{seed}.json")
    if (finished := finished_seed(path, spec)) is not None:
        return {**finished, "seed": seed}
    result = subprocess.run([sys.executable, os.path.join(REFERENCE, case.script + ".py"),
                             "--spec", json.dumps(spec), "--json", path],
                            capture_output=True, text=True, cwd=REFERENCE)
    if result.returncode != 0:
        raise SystemExit(f"error: the reference side of {case.script} seed {seed} failed:\n"
                         + result.stderr[-3000:])
    with open(path) as stream:
        return {**json.load(stream), "seed": seed}


def summary(runs):
    values = [run["final_test_accuracy"] for run in runs]
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "values": values}


def write_outputs(name, case, args, runs, comparison, numbers, edits, reports):
    from plots.style import line_chart
    from training import record
    from training.machine import device_description

    keras_runs = [run for run in runs if run["side"] == "keras"]
    reference_runs = [run for run in runs if run["side"] == "reference"]
    result = {"case": name, "experiment": case.experiment, "reference": case.script,
              "about": case.about, "epochs": args.epochs, "train_images": args.train_images,
              "eval_images": args.eval_images, "seeds": args.seeds, "lr_factor": args.lr_factor,
              "schedule": numbers, "keras_edits": edits, "device": device_description(),
              "keras": summary(keras_runs), "reference_side": summary(reference_runs),
              **comparison, "runs": runs}
    suffix = f"_lr{args.lr_factor:g}" if args.lr_factor != 1 else ""
    json_path = args.json or os.path.join(reports, f"parity_{name}{suffix}.json")
    record.write_json(json_path, result)
    figures = os.path.join(os.path.dirname(json_path), "figures")
    os.makedirs(figures, exist_ok=True)
    styles = {"keras": {"color": "#d62728"}, "reference": {"color": "#1f77b4", "linestyle": "--"}}
    for key, ylabel, scale in (("test_accuracy", f"accuracy on {args.eval_images} test images (%)", 100),
                               ("loss", "training loss", 1)):
        series = [{"label": f"{run['side']} seed {run['seed']}",
                   "x": [row["epoch"] + 1 for row in run["history"]],
                   "y": [scale * row[key] for row in run["history"]], "style": styles[run["side"]]}
                  for run in runs]
        line_chart(os.path.join(figures, f"parity_{name}{suffix}_{'accuracy' if scale == 100 else 'loss'}.png"),
                   f"{name}: Keras recipe (solid) and the authors' loop (dashed)", "epoch", ylabel,
                   series)
    keras_stats, reference_stats = result["keras"], result["reference_side"]
    lines = [f"# Parity: {name}{' (learning rate x' + format(args.lr_factor, 'g') + ')' if suffix else ''}", "",
             f"The suite's `{case.experiment}` recipe (run.py, PyTorch backend) against "
             f"`benchmarks/reference/{case.script}.py` ({case.about}); {args.epochs} epochs on "
             f"the first {args.train_images:,} training images, {args.seeds} seeds a side, "
             f"scored on the first {args.eval_images:,} test images each epoch and the whole "
             f"test set at the end. Schedule as compressed for both sides: "
             f"{json.dumps(numbers) if numbers else 'one-cycle over the run'}. Device: "
             f"{result['device']}.", "",
             "| side | final test accuracy, mean ± std (%) | seeds |", "|---|---|---|",
             f"| Keras | {100 * keras_stats['mean']:.2f} ± {100 * (keras_stats['std'] or 0):.2f} | "
             + ", ".join(f"{100 * v:.2f}" for v in keras_stats["values"]) + " |",
             f"| reference | {100 * reference_stats['mean']:.2f} ± "
             f"{100 * (reference_stats['std'] or 0):.2f} | "
             + ", ".join(f"{100 * v:.2f}" for v in reference_stats["values"]) + " |", "",
             f"Verdict: **{comparison['verdict']}** (difference {100 * comparison['difference']:+.2f} "
             f"points; Welch t = {comparison['welch_t']:.2f}, p = {comparison['welch_p']:.3f}; "
             f"twice the larger seed std {200 * comparison['larger_seed_std']:.2f} points). "
             "Same within noise means p >= 0.05 and |difference| <= 2 x the larger std.", ""]
    record.atomic_write_text(os.path.splitext(json_path)[0] + ".md", "\n".join(lines))
    return json_path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--eval-images", type=int, default=2000,
                        help="test images scored after every epoch (the whole set at the end)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", help="local CIFAR copy: folder or .tar.gz")
    parser.add_argument("--json", help="output JSON (default reports/parity_<case>.json)")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "runs", "parity"),
                        help="where both sides' runs go (default runs/parity/)")
    parser.add_argument("--lr-factor", type=float, default=1.0,
                        help="multiply the Keras side's learning rate (a broken recipe)")
    args = parser.parse_args(argv)
    for name in ("epochs", "train_images", "eval_images", "seeds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("error: the reference side needs PyTorch and torchvision: "
              "pip install -r requirements-bench.txt", file=sys.stderr)
        return 1
    from training.machine import import_keras

    import_keras()  # the figures and the device description
    from experiments.recipes import EXPERIMENTS

    case = CASES[args.case]
    recipe = EXPERIMENTS[case.experiment]
    edits, numbers = compressed(recipe, case, args.epochs, args.train_images)
    out = os.path.join(args.output_dir, args.case)
    os.makedirs(out, exist_ok=True)
    runs = []
    for seed in range(args.seeds):
        for side in ("keras", "reference"):
            run = (keras_side(case, recipe, args, edits, seed, out) if side == "keras"
                   else reference_side(case, args, numbers, seed, out))
            runs.append(run)
            print(f"{args.case} seed {seed} {side}: final test accuracy "
                  f"{100 * run['final_test_accuracy']:.2f}% ({run['seconds']:.0f} s)", flush=True)
    comparison = verdict([r["final_test_accuracy"] for r in runs if r["side"] == "keras"],
                         [r["final_test_accuracy"] for r in runs if r["side"] == "reference"])
    path = write_outputs(args.case, case, args, runs, comparison, numbers, edits,
                         os.path.join(ROOT, "reports"))
    print(f"{args.case}: {comparison['verdict']} (difference "
          f"{100 * comparison['difference']:+.2f} points, p = {comparison['welch_p']:.3f}); {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
