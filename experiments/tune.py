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

from experiments.search_folder import (FATAL_EXIT, check_settings, collect_results,  # noqa: E402
                                       search_dir, trial_edits, write_outputs)
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


def resolve_defaults(args):
    """The search's own oracle and epochs where the command names none."""
    search = SEARCHES[args.search]
    args.tuner = args.tuner or search.tuner
    if args.epochs is None:
        args.epochs = search.epochs
    return args


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

        from experiments.tuner import make_tuner

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
