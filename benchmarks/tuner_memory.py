"""Resident memory across the trials of a KerasTuner search.

    python benchmarks/tuner_memory.py [--search optimizer] [--trials 10]
        [--data-dir P] [--json OUT]

Runs `experiments/tune.py SEARCH --quick --max-trials N` and reads the search
process's resident memory that each trial recorded when it finished (each trial
trains in a process of its own). KerasTuner searches are known to grow in
memory from trial to trial; the target is that the memory after the last trial
is at most 1.25 times that after trial 2 (trial 1 also pays for imports and
the data). Writes JSON and a markdown table into reports/.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402

from benchmarks.augment import machine  # noqa: E402

TARGET_RATIO = 1.25
TUNE = os.path.join(ROOT, "experiments", "tune.py")


def run_search(search, trials, data_dir, directory, backend):
    command = [sys.executable, TUNE, search, "--quick", "--max-trials", str(trials),
               "--directory", directory]
    if data_dir:
        command += ["--data-dir", data_dir]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": backend})
    if result.returncode != 0:
        raise SystemExit(f"error: the search failed (exit {result.returncode}):\n"
                         + result.stderr[-3000:])
    with open(os.path.join(directory, search, "results.json")) as stream:
        return json.load(stream)["trials"], time.time() - started


def table(result):
    lines = ["# Resident memory across a KerasTuner search", "",
             f"`tune.py {result['search']} --quick --max-trials {result['trials']}` in one "
             f"process, backend {result['backend']}; {result['machine']['cpu_count']} CPU cores, "
             f"{result['machine']['platform']}; {result['date']}.", "",
             ]
    lines += markdown_table(
        ["trial (in order of finishing)", "status", "trainable parameters", "resident MiB"],
        [[index, trial["status"], f"{trial['trainable_params']:,}", f"{trial['resident_mb']:,.0f}"]
         for index, trial in enumerate(result["per_trial"], start=1)], "rlrr")
    verdict = "met" if result["met"] else "**not met**"
    lines += ["", f"After trial {len(result['per_trial'])} / after trial 2: "
              f"**{result['ratio']:.3f}** (target at most {TARGET_RATIO}: {verdict}).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", default="optimizer",
                        help="a search from tune.py --list (optimizer: ResNet-20, quick on a CPU)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--data-dir", help="local CIFAR-10 copy (default: keras.datasets)")
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "tuner_memory.json"))
    args = parser.parse_args(argv)
    if args.trials < 3:
        parser.error(f"--trials must be at least 3 to compare with trial 2; got {args.trials}")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    with tempfile.TemporaryDirectory() as directory:
        trials, seconds = run_search(args.search, args.trials, args.data_dir, directory, backend)
    finished = [{**t, "resident_mb": t["search_resident_mb"]} for t in trials
                if t.get("search_resident_mb") is not None]
    if len(finished) < 3:
        raise SystemExit(f"error: expected at least 3 finished trials; got {finished}")
    # Trial ids count up in the order the oracle created them; one process runs them in order.
    finished.sort(key=lambda t: int(t["trial_id"]))
    ratio = finished[-1]["resident_mb"] / finished[1]["resident_mb"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "backend": backend,
              "search": args.search, "trials": args.trials, "search_seconds": round(seconds, 1),
              "per_trial": [{k: t[k] for k in ("trial_id", "status", "trainable_params",
                                               "resident_mb")} for t in finished],
              "resident_mb_trial_2": finished[1]["resident_mb"],
              "resident_mb_last": finished[-1]["resident_mb"],
              "ratio": round(ratio, 4), "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_report(args.json, result, table)
    print(f"resident memory after trial {len(finished)} / after trial 2: {ratio:.3f} "
          f"(target <= {TARGET_RATIO}); wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
