"""Turn a slice of GPU time into finished rows: a queue of experiments in priority
order, k of them side by side, all stopped resumable at a deadline.

    python experiments/campaign.py --plan 840 [--times reports/epochs_gpu_h100.json]
    python experiments/campaign.py --budget-s 540 --data-dir D --output-dir O
        [--k N] [--queue resnet_deep,resnet20] [--results results --report reports]

--plan prints, from measured epoch times alone, which queued recipes would finish
in BUDGET seconds, before any GPU time is spent. A run trains through run.py
with --deadline-s, so it starts no epoch it cannot end in time and leaves its
backup for the next slice: the same command resumes every unfinished run. The
summary (what finished, what stopped where, what never started) goes to
<output>/campaign.json and .md; --results copies the finished records there
(no weights) and --report regenerates that report from them.
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Priority for the first slices (main job first; each tier in the order given).
QUEUE = (
    # the CNN-to-ResNet progression's ResNets and He et al.'s anchor
    "resnet_deep", "modified_resnet", "resnet20", "resnet_step", "resnet_plain",
    # each paper's headline row
    "resnet5m_row6", "mobilenetv2", "se_resnet_mixup", "cnn_best",
    # the other He depths, the rest of paper 001's table, MobileNetV2's variants, label noise
    "resnet32", "resnet44", "resnet56", "resnet110",
    *(f"resnet5m_row{row}" for row in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)),
    "mobilenetv2_t6", "mobilenetv2_t5", "mobilenetv2_adam", "mobilenetv2_stride2",
    "noisy_labels", "noisy_labels_symmetric0", "noisy_labels_symmetric20",
    "noisy_labels_symmetric40", "noisy_labels_symmetric60", "noisy_labels_symmetric80",
    "noisy_labels_asymmetric40",
)
DEFAULT_TIMES = os.path.join(ROOT, "reports", "epochs_gpu_h100.json")
MARGIN_S = 20  # kept back from the budget: the last epoch's scoring and the record
STOPPED = 3  # run.py's exit status for a run stopped at its deadline


def measured(times):
    """{experiment: {"epoch_s", "first_extra_s", "input_threads", "k"}}: the fastest
    measured steady epoch of each experiment (epochs.py's cases; `side_by_side`,
    where a case has it, is how many ran at once, else 1)."""
    best = {}
    for case in times.get("cases", []):
        epochs = case["epochs"]
        later = epochs[1:] or epochs
        epoch = sum(row["seconds"] for row in later) / len(later)
        scale = 50_000 / case["train_images"] if case.get("train_images") else 1.0
        entry = {"epoch_s": epoch * scale, "first_extra_s": max(epochs[0]["seconds"] - epoch, 0.0),
                 "input_threads": case.get("input_threads", 0),
                 "k": case.get("side_by_side", 1), "device": case.get("device")}
        name = case["experiment"]
        if name not in best or entry["epoch_s"] < best[name]["epoch_s"]:
            best[name] = entry
    return best


def plan(queue, table, budget_s, k, epochs_of):
    """[(experiment, epochs, seconds or None, start, end, finishes)] with k slots
    taken in queue order, each by the slot that frees first. An unmeasured recipe
    is listed and left out of the slots."""
    slots = [0.0] * k
    rows = []
    for name in queue:
        epochs = epochs_of(name)
        if name not in table:
            rows.append((name, epochs, None, None, None, False))
            continue
        entry = table[name]
        seconds = epochs * entry["epoch_s"] + entry["first_extra_s"]
        slot = min(range(k), key=lambda i: slots[i])
        start = slots[slot]
        if start >= budget_s - MARGIN_S:
            rows.append((name, epochs, seconds, None, None, False))
            continue
        slots[slot] = start + seconds
        rows.append((name, epochs, seconds, start, start + seconds,
                     start + seconds <= budget_s - MARGIN_S))
    return rows


def plan_text(rows, budget_s, k, times_path):
    lines = [f"Plan for {budget_s:.0f} s, {k} run(s) at a time, from {times_path} "
             f"(less {MARGIN_S} s kept back):", "",
             "| experiment | epochs | seconds | starts at | ends at | finishes |",
             "|---|---:|---:|---:|---:|---|"]
    for name, epochs, seconds, start, end, finishes in rows:
        if seconds is None:
            lines.append(f"| {name} | {epochs} | not measured | - | - | unknown |")
        elif start is None:
            lines.append(f"| {name} | {epochs} | {seconds:.0f} | - | - | no (no time left) |")
        else:
            lines.append(f"| {name} | {epochs} | {seconds:.0f} | {start:.0f} | {end:.0f} | "
                         f"{'yes' if finishes else 'no: resumes next slice'} |")
    done = [row[0] for row in rows if row[5]]
    lines += ["", f"{len(done)} finish: {', '.join(done) or 'none'}."]
    return "\n".join(lines)


def run_state(output_dir, name, run_id):
    """(status, epochs logged) of a run folder, or ("not started", 0)."""
    from training import record

    run_dir = os.path.join(output_dir, name, run_id)
    status = record.read_status(run_dir) if os.path.isdir(run_dir) else None
    if status is None:
        return "not started", 0
    try:
        logged = record.logged_epochs(os.path.join(run_dir, record.HISTORY))
    except record.HistoryError:
        logged = 0
    return status["status"], logged


def launch(name, args, deadline, threads):
    command = [sys.executable, os.path.join(ROOT, "experiments", "run.py"), name,
               "--output-dir", args.output_dir, "--run-id", args.run_id,
               "--deadline-s", f"{max(deadline - time.time(), 0.0):.0f}",
               "--input-threads", str(threads), *args.run_args]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    log = open(os.path.join(args.output_dir, f"{name}.log"), "a")
    env = dict(os.environ)
    if args.k > 1:  # JAX takes 75% of the GPU's memory per process unless told not to
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log


def campaign(args, queue, table, epochs_of):
    """Runs the queue k at a time until the deadline; returns the summary rows."""
    started = time.time()
    deadline = started + args.budget_s - MARGIN_S
    waiting = [name for name in queue if run_state(args.output_dir, name, args.run_id)[0]
               != "completed"]
    running, exits = {}, {}
    while waiting or running:
        while waiting and len(running) < args.k:
            name = waiting[0]
            first_epoch = table.get(name, {}).get("epoch_s", 0.0)
            if time.time() + first_epoch > deadline:  # not even one epoch fits
                break
            waiting.pop(0)
            threads = args.threads.get(name, table.get(name, {}).get("input_threads", 0))
            running[name] = launch(name, args, deadline, threads)
            print(f"campaign: started {name} ({len(running)} running, "
                  f"{deadline - time.time():.0f} s left)", flush=True)
        if not running:
            break
        time.sleep(1)
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                exits[name] = process.returncode
                del running[name]
                print(f"campaign: {name} exited {process.returncode}", flush=True)
    rows = []
    for name in queue:
        status, logged = run_state(args.output_dir, name, args.run_id)
        rows.append({"experiment": name, "status": status, "epochs_done": logged,
                     "epochs": epochs_of(name), "exit": exits.get(name)})
    return rows, time.time() - started


def summary_text(rows, seconds, args):
    finished = [r for r in rows if r["status"] == "completed"]
    lines = [f"# Campaign: {len(finished)} of {len(rows)} finished in {seconds:.0f} s "
             f"({args.k} at a time)", "",
             "| experiment | status | epochs done | exit |", "|---|---|---|---:|"]
    for row in rows:
        lines.append(f"| {row['experiment']} | {row['status']} | {row['epochs_done']} / "
                     f"{row['epochs']} | {'' if row['exit'] is None else row['exit']} |")
    lines += ["", "Rerun the same command to resume the unfinished runs."]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=float, metavar="BUDGET_S",
                        help="print which queued recipes would finish in BUDGET_S seconds, "
                             "from measured epoch times, and train nothing")
    parser.add_argument("--budget-s", type=float, help="seconds this campaign may run")
    parser.add_argument("--times", default=DEFAULT_TIMES,
                        help="measured epoch times (benchmarks/epochs.py's JSON; default "
                             "reports/epochs_gpu_h100.json)")
    parser.add_argument("--queue", help="comma-separated experiments, each NAME or NAME:INPUT_THREADS "
                                        "(default: the priority queue, threads from --times)")
    parser.add_argument("--k", type=int, help="runs side by side (default: the largest "
                                              "side_by_side the times record, else 1)")
    parser.add_argument("--data-dir", help="local CIFAR copy, as run.py takes it")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--run-id", default="seed0")
    parser.add_argument("--results", help="copy the finished records (no weights) here")
    parser.add_argument("--report", help="with --results: write the report of it here")
    parser.add_argument("run_args", nargs="*", help="after --: passed to every run.py call")
    args = parser.parse_args(argv)
    if (args.plan is None) == (args.budget_s is None):
        parser.error("pass --plan BUDGET_S to plan, or --budget-s S to run")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from experiments.recipes import EXPERIMENTS
    from training import record

    items = args.queue.split(",") if args.queue else list(QUEUE)
    queue = [item.partition(":")[0] for item in items]
    threads = {name: int(count) for name, _, count in (i.partition(":") for i in items)
               if count.isdigit()}
    unknown = [name for name in queue if name not in EXPERIMENTS]
    if unknown:
        print(f"error: unknown experiments {unknown}; see python experiments/run.py --list",
              file=sys.stderr)
        return 2
    try:
        times = record.read_json(args.times)
    except (OSError, ValueError) as error:
        print(f"error: cannot read the measured times {args.times} ({error}); pass --times "
              f"with benchmarks/epochs.py's JSON.", file=sys.stderr)
        return 2
    table = measured(times)
    args.threads = threads  # the queue's own thread counts win over the table's
    k = args.k or max([entry["k"] for entry in table.values()] or [1])
    if k < 1:
        print(f"error: --k must be at least 1; got {k}", file=sys.stderr)
        return 2
    args.k = k

    def epochs_of(name):
        return EXPERIMENTS[name].epochs

    if args.plan is not None:
        print(plan_text(plan(queue, table, args.plan, k, epochs_of), args.plan, k, args.times))
        return 0
    os.makedirs(args.output_dir, exist_ok=True)
    rows, seconds = campaign(args, queue, table, epochs_of)
    text = summary_text(rows, seconds, args)
    record.atomic_write_text(os.path.join(args.output_dir, "campaign.md"), text)
    record.write_json(os.path.join(args.output_dir, "campaign.json"),
                      {"seconds": seconds, "k": k, "budget_s": args.budget_s, "runs": rows})
    print(text)
    finished = sorted({row["experiment"] for row in rows if row["status"] == "completed"})
    if args.results and finished:
        from experiments import collect

        collect.collect(args.output_dir, args.results, set(finished))
        if args.report:
            from experiments import report

            report.main(["--runs", args.results, "--out", args.report])
    return 0 if all(row["exit"] in (None, 0, STOPPED) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
