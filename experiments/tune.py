"""KerasTuner searches over the suite's recipes.

    python experiments/tune.py SEARCH [--tuner random|bayesian|hyperband] [--max-trials N]
        [--epochs N] [--directory searches/] [--data-dir P] [--quick] [--workers N] [--seed N]
    python experiments/tune.py SEARCH --plan [--times reports/epochs_cpu.json]
    python experiments/tune.py --list

Each trial is a run of the search's base experiment with the trial's edits,
through the same engine as run.py (its run record lands in
<directory>/<search>/runs/), on the search's subset: trials select on images held
out of the training set and never score the test set. KerasTuner's oracle and project files live in
<directory>/<search>/; rerunning the same command resumes: finished trials are
kept and an interrupted one continues from its last finished epoch.

Outputs in <directory>/<search>/: results.json (every trial), best.keras,
best_command.txt (the run.py command that trains the best configuration in
full), and plots (score by trial, accuracy against parameters, each
hyperparameter against the score).
"""

import argparse
import difflib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from foundation import files  # noqa: E402
from experiments.searches import SEARCHES  # noqa: E402

TUNERS = ("random", "bayesian", "hyperband")
USAGE_ERROR, RUN_ERROR = 2, 1


def parse_args(argv):
    parser = argparse.ArgumentParser(description="KerasTuner searches over the suite's recipes.")
    parser.add_argument("search", nargs="?", help="search name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the searches")
    parser.add_argument("--tuner", choices=TUNERS,
                        help="KerasTuner's oracle (default: the search's, see --list)")
    parser.add_argument("--max-trials", type=int, default=20,
                        help="trials to run (random, bayesian; default 20); hyperband sizes itself")
    parser.add_argument("--epochs", type=int,
                        help="epochs per trial (hyperband: the maximum); default: the search's, "
                             "else the base recipe's")
    parser.add_argument("--plan", action="store_true",
                        help="print what the search would cost (trials, epochs, hours) from "
                             "measured epoch times, and train nothing")
    parser.add_argument("--times", default=os.path.join(ROOT, "reports", "epochs_cpu.json"),
                        help="the measured epoch times --plan reads (default: "
                             "reports/epochs_cpu.json, this suite's 2-core CPU)")
    parser.add_argument("--directory", default=os.path.join(ROOT, "searches"),
                        help="where searches go (default: the repository's searches/); "
                             "rerun to resume")
    parser.add_argument("--data-dir", help="local CIFAR copy: folder or .tar.gz")
    parser.add_argument("--quick", action="store_true", help="each trial as run.py --quick")
    parser.add_argument("--workers", type=int, default=0,
                        help="run N worker processes against a chief oracle on this machine")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the oracle and of every trial's run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the base recipe for every trial, as run.py's --set")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the search folder's trials and start over (a folder made "
                             "with other settings is otherwise refused)")
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # internal: one trial's process
    return parser.parse_args(argv)


def fail(message, code):
    print(f"error: {message}", file=sys.stderr)
    return code


def search_dir(args):
    return os.path.join(args.directory, args.search)


def trial_edits(args):
    """The edits every trial of this search gets: its selection subset, then --set."""
    return list(SEARCHES[args.search].subset) + list(args.set)


def resolve_defaults(args):
    """The search's own oracle and epochs where the command names none."""
    search = SEARCHES[args.search]
    args.tuner = args.tuner or search.tuner
    if args.epochs is None:
        args.epochs = search.epochs
    return args


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


FATAL_EXIT = 3  # a trial process that stopped on bad data, a bad recipe or a run error


def die_with_parent(parent_pid):
    """Linux: this trial process is killed when the search process dies (even by
    SIGKILL), so a rerun never races an orphaned trial for its run folder.

    Called by the trial process itself, not as subprocess's preexec_fn: that
    would run Python between fork and exec in the multithreaded search process,
    where gRPC's fork handlers (KerasTuner's oracle client of a distributed
    search) now and then aborted the child with an epoll error."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the search died before the signal was armed: nobody waits for this trial


def run_trial_process(args, edits, runs_dir, run_id):
    """Trains one trial in a fresh process and returns its metrics.

    A process per trial keeps the search's memory flat: in one process, clearing
    Keras's session after each trial still left TensorFlow ~45 MB more resident per
    ResNet-20 trial (1.43x from trial 2 to 10, measured), the growth KerasTuner
    users report. The child resumes an interrupted run like run.py does."""
    import keras_tuner

    spec = {"base": SEARCHES[args.search].base, "edits": trial_edits(args) + list(edits),
            "runs_dir": runs_dir, "run_id": run_id, "seed": args.seed,
            "data_dir": args.data_dir, "quick": args.quick, "parent_pid": os.getpid()}
    import tempfile

    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--trial",
                                  json.dumps(spec)], stdout=subprocess.DEVNULL, stderr=errors,
                                 text=True)
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
    from training import record

    run_dir = os.path.join(runs_dir, SEARCHES[args.search].base, run_id)
    if child.returncode != 0:
        reason = f"the trial's process exited with {child.returncode}: {stderr[-2000:]}"
        info = record.read_json(os.path.join(run_dir, "trial.json"))
        record.write_json(os.path.join(run_dir, "trial.json"),
                          {**info, "status": "failed", "reason": reason})
        raise RuntimeError(f"trial {run_id}: {reason}")
    process = {"process": child.pid, "resident_mb": round(usage.ru_maxrss / 2**10, 1)}  # KiB
    return record.read_json(os.path.join(run_dir, record.METRICS)), process


def train_trial(spec):
    """The trial process: the base recipe with the trial's edits, through the engine."""
    from data.cifar import DataError
    from experiments.recipes import EXPERIMENTS
    from plots.run_plots import plot_run
    from training.engine import RunError, RunOptions, run_directory, train
    from training.recipe import RecipeError, apply_overrides

    try:
        recipe = apply_overrides(EXPERIMENTS[spec["base"]], spec["edits"])
        options = RunOptions(output_dir=spec["runs_dir"], run_id=spec["run_id"],
                             seed=spec["seed"], data_dir=spec["data_dir"], quick=spec["quick"],
                             verbose=0, score_test=False)
        train(recipe, options)
        plot_run(run_directory(recipe, options))
    except (DataError, RecipeError, RunError) as error:
        return fail(str(error), FATAL_EXIT)
    except KeyboardInterrupt:
        return 130
    return 0


def make_tuner(args):
    """The KerasTuner tuner for `args`: the project's oracle, a run_trial that trains
    through the suite's engine."""
    import keras
    import keras_tuner

    from experiments.recipes import EXPERIMENTS
    from models import build_model, count_params
    from training import record
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
    runs_dir = os.path.join(search_dir(args), "runs")

    class Space(keras_tuner.HyperModel):
        """Declares the search space; trials train through run_trial, not this model."""

        def build(self, hp):
            search.define(hp)
            return keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])

    class SuiteTuner(keras_tuner.Tuner):
        started = time.time()

        def run_trial(self, trial, *fit_args, **fit_kwargs):
            hp = trial.hyperparameters
            edits = search.define(hp)
            if "tuner/epochs" in hp.values:
                edits.append(f"epochs={hp.values['tuner/epochs']}")
            elif args.epochs:
                edits.append(f"epochs={args.epochs}")
            recipe = apply_overrides(base, edits)
            run_dir = os.path.join(runs_dir, recipe.name, f"trial_{trial.trial_id}")
            os.makedirs(run_dir, exist_ok=True)
            model = build_model(recipe.model, 10, **recipe.model_args)
            params = count_params(model)[0]
            del model
            keras.backend.clear_session()
            info = {"trial_id": trial.trial_id, "edits": edits, "trainable_params": params}
            if search.budget and params > search.budget:
                # Rejected before training: recorded, and scored as the worst result so
                # the oracle learns the region, but not a failure.
                record.write_json(os.path.join(run_dir, "trial.json"),
                                  {**info, "status": "over_budget",
                                   "resident_mb": resident_megabytes(), "process": os.getpid()})
                return {"val_accuracy": 0.0}
            trial_file = os.path.join(run_dir, "trial.json")
            earlier = record.read_json(trial_file) if os.path.exists(trial_file) else {}
            if earlier.get("status") == "failed":
                info["earlier_failure"] = earlier.get("reason")
            record.write_json(trial_file, {**info, "status": "running"})
            metrics, process = run_trial_process(args, edits, runs_dir, f"trial_{trial.trial_id}")
            record.write_json(os.path.join(run_dir, "trial.json"),
                              {**info, "status": "completed", **process,
                               "search_resident_mb": resident_megabytes()})
            return {"val_accuracy": metrics["best_val_accuracy"]}

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
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

    return SuiteTuner(oracle=oracle, hypermodel=Space(), directory=args.directory,
                      project_name=args.search, overwrite=False)


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


def trial_schedule(tuner, epochs, max_trials):
    """[(trials, epochs each)] that the oracle asks for: Hyperband's rounds, from
    KerasTuner's own bracket arithmetic (an upper bound: a repeated configuration
    is skipped), or max_trials trials of `epochs`."""
    if tuner != "hyperband":
        return [(max_trials, epochs)]
    import keras_tuner

    oracle = keras_tuner.oracles.HyperbandOracle(
        keras_tuner.Objective("val_accuracy", "max"), max_epochs=epochs, factor=3)
    return [(oracle._get_size(bracket, round_number), oracle._get_epochs(bracket, round_number))
            for bracket in reversed(range(oracle._get_num_brackets()))
            for round_number in range(oracle._get_num_rounds(bracket))]


def measured_epoch(times, experiment, train_images):
    """(seconds a steady epoch, seconds a trial spends outside its steady epochs,
    the case) from an epochs.py JSON, scaled to `train_images`; None if unmeasured."""
    cases = [case for case in times.get("cases", []) if case["experiment"] == experiment]
    if not cases:
        return None
    case = min(cases, key=lambda c: abs(c["train_images"] - train_images))
    later = case["epochs"][1:] or case["epochs"]
    epoch = sum(row["seconds"] for row in later) / len(later)
    start = case.get("process_seconds", 0.0) - epoch * len(case["epochs"])
    return epoch * train_images / case["train_images"], max(start, 0.0), case


def print_plans(args, names):
    """--plan: each search's trials, epochs and hours from measured epoch times."""
    from experiments.recipes import EXPERIMENTS
    from training import record
    from training.recipe import RecipeError, apply_overrides

    if not os.path.exists(args.times):
        return fail(f"no measured epoch times at {args.times}; measure them with: python "
                    f"benchmarks/epochs.py --models {' '.join(SEARCHES[n].base for n in names)} "
                    f"--input-threads 0 --set val_split=5000 --set train_images=10000 "
                    f"--json {args.times}", USAGE_ERROR)
    times = record.read_json(args.times)
    first = (times.get("cases") or [{}])[0]
    print(f"Measured epoch times: {args.times} ({first.get('device', '?')}, "
          f"{first.get('backend', '?')} backend, {times.get('date', '?')}).")
    for name in names:
        search = SEARCHES[name]
        tuner = args.tuner or search.tuner
        epochs = args.epochs or search.epochs
        try:
            base = apply_overrides(EXPERIMENTS[search.base], list(search.subset) + list(args.set))
        except RecipeError as error:
            return fail(str(error), USAGE_ERROR)
        epochs = epochs or base.epochs
        if args.quick:
            epochs = args.epochs or 2
        schedule = trial_schedule(tuner, epochs, args.max_trials)
        trials = sum(count for count, _ in schedule)
        trial_epochs = sum(count * each for count, each in schedule)
        measured = measured_epoch(times, search.base, base.train_images or 50_000 - base.val_split)
        head = (f"{name} ({tuner}, base {search.base}, {base.train_images:,} training and "
                f"{base.val_split:,} validation images): {trials} trials, {trial_epochs} epochs")
        if measured is None:
            print(f"{head}; no measured epoch time for {search.base} in {args.times}.")
            continue
        epoch, start, case = measured
        seconds = trial_epochs * epoch + trials * start
        print(f"{head}; {epoch:.0f} s an epoch at batch {case['batch_size']} and {start:.0f} s "
              f"to start each trial -> {seconds / 3600:.1f} h")
    return 0


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_distributed(args, argv):
    """A chief oracle and `args.workers` workers on this machine (loopback)."""
    port = str(free_port())
    child_args = [a for a in argv if not a.startswith("--workers")]
    if "--workers" in argv:
        index = argv.index("--workers")
        child_args = argv[:index] + argv[index + 2:]
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    command = [sys.executable, os.path.abspath(__file__), *child_args]
    chief = subprocess.Popen(command, env={**base_env, "KERASTUNER_TUNER_ID": "chief"})
    time.sleep(3)  # let the chief open its port
    workers = [subprocess.Popen(command, env={**base_env, "KERASTUNER_TUNER_ID": f"tuner{i}"})
               for i in range(args.workers)]
    codes = [worker.wait() for worker in workers]
    try:
        chief.wait(timeout=120)
    except subprocess.TimeoutExpired:
        chief.terminate()
    if any(codes):
        return fail(f"a worker exited with {codes}; rerun the same command to resume.", RUN_ERROR)
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from training.machine import import_keras

    import_keras()  # without TensorFlow's CUDA probing on the console
    if args.trial:
        spec = json.loads(args.trial)
        if sys.platform.startswith("linux"):
            die_with_parent(spec.get("parent_pid"))
        return train_trial(spec)
    if args.list:
        for search in SEARCHES.values():
            budget = f", budget {search.budget:,} parameters" if search.budget else ""
            print(f"{search.name:24s} base {search.base}, {search.tuner}{budget}: "
                  f"{search.description}")
        return 0
    if args.plan and args.search is None:
        return print_plans(args, list(SEARCHES))
    if args.search not in SEARCHES:
        close = difflib.get_close_matches(args.search or "", list(SEARCHES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return fail(f"unknown search {args.search!r}.{hint} Searches: {', '.join(SEARCHES)}.",
                    USAGE_ERROR)
    for flag, value in (("--max-trials", args.max_trials), ("--epochs", args.epochs)):
        if value is not None and value < 1:  # --epochs 0 is not "the recipe's epochs"
            return fail(f"{flag} must be at least 1; got {value}.", USAGE_ERROR)
    if args.workers < 0:
        return fail(f"--workers must be >= 0; got {args.workers}.", USAGE_ERROR)
    if not 0 <= args.seed < 2**32:
        return fail(f"--seed must be a whole number in [0, 2**32); got {args.seed}.", USAGE_ERROR)
    resolve_defaults(args)
    if args.plan:
        return print_plans(args, [args.search])
    from experiments.recipes import EXPERIMENTS
    from training.recipe import RecipeError, apply_overrides

    try:
        base = apply_overrides(EXPERIMENTS[SEARCHES[args.search].base], trial_edits(args))
    except RecipeError as error:
        return fail(str(error), USAGE_ERROR)
    if not base.val_split:
        return fail("a search selects on images held out of the training set, never on the "
                    "test set; drop the --set that made val_split 0.", USAGE_ERROR)
    from data.cifar import DataError, ensure_available

    try:  # before any trial starts: a trial that cannot load its data is left "running"
        ensure_available(base.dataset, args.data_dir, base.label_mode)
    except DataError as error:
        return fail(str(error), RUN_ERROR)
    from training import record

    # One search process per folder (its workers, and a distributed search's
    # processes, which KERASTUNER_TUNER_ID names, share the chief's folder).
    lock = None
    try:
        if os.environ.get("KERASTUNER_TUNER_ID") is None:
            lock = record.FolderLock(search_dir(args), "search").acquire()
        else:
            os.makedirs(search_dir(args), exist_ok=True)
    except record.FolderBusy as error:
        return fail(str(error), RUN_ERROR)
    except OSError as error:
        return fail(f"cannot write the search to {search_dir(args)} ({error.strerror}); pass "
                    f"--directory with a writable folder.", RUN_ERROR)
    try:
        return search_locked(args, argv)
    finally:
        if lock is not None:
            lock.release()


def search_locked(args, argv):
    """main() once the search folder is this process's."""
    if args.overwrite and os.environ.get("KERASTUNER_TUNER_ID") is None:
        folder = search_dir(args)
        for name in os.listdir(folder):
            if name != ".lock":
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    problem = check_settings(args)
    if problem:
        return fail(problem, USAGE_ERROR)
    if args.workers:
        failure = run_distributed(args, argv)
        if failure is not None:
            return failure
    else:
        import keras_tuner

        tuner = make_tuner(args)
        try:
            tuner.search()
        except keras_tuner.errors.FatalError as error:
            return fail(str(error), RUN_ERROR)
        except KeyboardInterrupt:
            return fail("interrupted; rerun the same command to resume.", 130)
        role = os.environ.get("KERASTUNER_TUNER_ID")
        if role == "chief":  # the oracle's process has the last word on a distributed search
            write_outputs(args)
        if role:
            return 0
    best = write_outputs(args)
    trials = collect_results(args)
    if best is None:
        over = sum(t["status"] == "over_budget" for t in trials)
        if trials and over == len(trials):
            return fail(f"all {over} configurations were over the {SEARCHES[args.search].budget:,}"
                        "-parameter budget, so nothing was trained; narrow the search space "
                        "(fewer blocks or smaller widths).", RUN_ERROR)
        return fail("no trial completed; see the trial folders for the reasons.", RUN_ERROR)
    # Named as its folders are (trial_<id>, KerasTuner's ids count from 0).
    print(f"{args.search}: {len(trials)} trials; best {100 * best['score']:.2f}% (trial_{best['trial_id']}, "
          f"{best['trainable_params']:,} parameters); results, plots and trials in "
          f"{search_dir(args)}. Train it in full with:\n  "
          + open(os.path.join(search_dir(args), "best_command.txt")).read().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
