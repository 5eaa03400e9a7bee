"""KerasTuner's side of a search: the space as a HyperModel, and a Tuner whose
trials train through the suite's engine, each in a process of its own
(`tune.py --trial`). tune.py imports this module only when a search runs."""

import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import keras_tuner

from experiments.search_folder import (FATAL_EXIT, collect_results, search_dir, trial_edits,
                                       write_outputs)
from experiments.searches import SEARCHES
from training import record

TUNE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tune.py")


def resident_megabytes():
    """This process's resident memory now (Linux /proc), else its peak so far."""
    try:
        with open("/proc/self/statm") as stream:
            pages = int(stream.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def run_trial_process(args, edits, runs_dir, run_id):
    """Trains one trial in a fresh process and returns its metrics.

    A process per trial keeps the search's memory flat: in one process, clearing
    Keras's session after each trial still left TensorFlow ~45 MB more resident per
    ResNet-20 trial (1.43x from trial 2 to 10, measured), the growth KerasTuner
    users report. The child resumes an interrupted run like run.py does."""
    spec = {"base": SEARCHES[args.search].base, "edits": trial_edits(args) + list(edits),
            "runs_dir": runs_dir, "run_id": run_id, "seed": args.seed,
            "data_dir": args.data_dir, "quick": args.quick, "parent_pid": os.getpid()}
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, TUNE, "--trial", json.dumps(spec)],
                                 stdout=subprocess.DEVNULL, stderr=errors, text=True)
        # wait4: this child's own exit status and peak memory (not the search's)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read()
    message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if child.returncode == FATAL_EXIT:
        raise keras_tuner.errors.FatalError(message.removeprefix("error: "))
    if child.returncode == 130 or child.returncode == -2:
        raise KeyboardInterrupt
    run_dir = os.path.join(runs_dir, SEARCHES[args.search].base, run_id)
    if child.returncode != 0:
        reason = f"the trial's process exited with {child.returncode}: {stderr[-2000:]}"
        info = record.read_json(os.path.join(run_dir, "trial.json"))
        record.write_json(os.path.join(run_dir, "trial.json"),
                          {**info, "status": "failed", "reason": reason})
        raise RuntimeError(f"trial {run_id}: {reason}")
    process = {"process": child.pid, "resident_mb": round(usage.ru_maxrss / 2**10, 1)}  # KiB
    return record.read_json(os.path.join(run_dir, record.METRICS)), process


class SearchSpace(keras_tuner.HyperModel):
    """Declares a search's space; trials train through SuiteTuner.run_trial, not this model."""

    def __init__(self, search):
        super().__init__()
        self.space = search

    def build(self, hp):
        self.space.define(hp)
        return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])


class SuiteTuner(keras_tuner.Tuner):
    """Trains each trial's recipe (the base with the trial's edits) in a trial process
    and records it in the search folder; `args` are tune.py's."""

    def __init__(self, args, base, **kwargs):
        self.args, self.base, self.space = args, base, SEARCHES[args.search]
        self.runs_dir = os.path.join(search_dir(args), "runs")
        self.started = time.time()
        super().__init__(**kwargs)

    def run_trial(self, trial, *fit_args, **fit_kwargs):
        from models import build_model, count_params
        from training.recipe import apply_overrides

        args, search, hp = self.args, self.space, trial.hyperparameters
        edits = search.define(hp)
        if "tuner/epochs" in hp.values:
            edits.append(f"epochs={hp.values['tuner/epochs']}")
        elif args.epochs:
            edits.append(f"epochs={args.epochs}")
        recipe = apply_overrides(self.base, edits)
        run_dir = os.path.join(self.runs_dir, recipe.name, f"trial_{trial.trial_id}")
        os.makedirs(run_dir, exist_ok=True)
        model = build_model(recipe.model, 10, **recipe.model_args)
        params = count_params(model)[0]
        del model
        keras.backend.clear_session()
        info = {"trial_id": trial.trial_id, "edits": edits, "trainable_params": params}
        trial_file = os.path.join(run_dir, "trial.json")
        if search.budget and params > search.budget:
            # Rejected before training: recorded, and scored as the worst result so
            # the oracle learns the region, but not a failure.
            record.write_json(trial_file, {**info, "status": "over_budget",
                                           "resident_mb": resident_megabytes(),
                                           "process": os.getpid()})
            return {"val_accuracy": 0.0}
        earlier = record.read_json(trial_file) if os.path.exists(trial_file) else {}
        if earlier.get("status") == "failed":
            info["earlier_failure"] = earlier.get("reason")
        record.write_json(trial_file, {**info, "status": "running"})
        metrics, process = run_trial_process(args, edits, self.runs_dir, f"trial_{trial.trial_id}")
        record.write_json(trial_file, {**info, "status": "completed", **process,
                                       "search_resident_mb": resident_megabytes()})
        return {"val_accuracy": metrics["best_val_accuracy"]}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        args, search = self.args, self.space
        # Counted from the trial records, so that workers of a distributed search
        # (whose oracle is a client of the chief's) report the whole search.
        results = collect_results(args)
        finished = sum(1 for t in results if t["status"] != "running")
        scores = [t["score"] for t in results if t["score"] is not None]  # trained trials
        total = args.max_trials if args.tuner != "hyperband" else "?"
        score = self.oracle.get_trial(trial.trial_id).score
        score = f"{100 * score:.2f}%" if score is not None else "none"
        this = next((t for t in results if t["trial_id"] == trial.trial_id), {})
        if this.get("status") == "over_budget":  # its 0.0 is not an accuracy
            score = (f"over budget ({this['trainable_params']:,} > {search.budget:,} "
                     f"parameters), not trained")
        print(f"[{self.tuner_id}] trial {finished} of {total} done: score {score}, "
              f"best so far {f'{100 * max(scores):.2f}%' if scores else 'none trained'}, "
              f"elapsed {time.time() - self.started:.0f} s", flush=True)
        if os.environ.get("KERASTUNER_TUNER_ID") is None:
            write_outputs(args)


def make_tuner(args):
    """The KerasTuner tuner for `args`: the search's oracle and a SuiteTuner."""
    from experiments.recipes import EXPERIMENTS
    from training.recipe import apply_overrides

    search = SEARCHES[args.search]
    base = apply_overrides(EXPERIMENTS[search.base], trial_edits(args))
    objective = keras_tuner.Objective("val_accuracy", direction="max")
    epochs = args.epochs or (2 if args.quick else base.epochs)
    # A trial whose process dies (the OOM killer, a lost device) gets one more try,
    # which resumes its run; the first failure stays in its trial.json.
    # KerasTuner reads seed 0 as "unseeded" (`seed or randint`): the oracle gets --seed + 1.
    common = dict(seed=args.seed + 1, max_retries_per_trial=1)
    if args.tuner == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(objective, max_epochs=epochs, factor=3,
                                                     hyperband_iterations=1, **common)
    elif args.tuner == "bayesian":
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(
            objective, max_trials=args.max_trials, **common)
    else:
        oracle = keras_tuner.oracles.RandomSearchOracle(objective, max_trials=args.max_trials,
                                                        **common)
    return SuiteTuner(args, base, oracle=oracle, hypermodel=SearchSpace(search),
                      directory=args.directory, project_name=args.search, overwrite=False)
