"""Training images/s on 1 and on N replicas, as scaling efficiency.

    python benchmarks/distribute.py [--model resnet20] [--replicas 2] [--rounds 2]
        [--backends tensorflow jax] [--json OUT]

Each measurement is a fresh process (a strategy must exist before the backend
initialises its devices): the experiment's network, optimizer and loss, built
under `--distribute none` and under TensorFlow's MirroredStrategy or JAX's
DataParallel, `fit` on random images at the recipe's (global) batch size; one
warm-up epoch, then images/s over the timed epochs. Rounds alternate the
configurations so that machine noise hits all of them. Without accelerators,
XLA_FLAGS=--xla_force_host_platform_device_count=N splits the CPU into N
devices; they share the same cores, so there the speedup shows overhead and
idle cores, not parallel hardware.
Writes JSON and a markdown table into reports/.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402

STRATEGY = {"tensorflow": "mirrored", "jax": "data-parallel"}


def measure(experiment, kind, images, epochs):
    """In a child process: images/s of `fit` for `experiment` under `kind`."""
    import keras
    import numpy as np

    from experiments.recipes import EXPERIMENTS
    from models import build_model
    from training.distribute import placement

    where = placement(kind)  # before any op
    recipe = EXPERIMENTS[experiment]
    where.check_batch(recipe.batch_size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(images, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, images), 10)
    with where.scope():
        model = build_model(recipe.model, 10, **recipe.model_args)
        model.compile(optimizer=recipe.optimizer.build(),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=recipe.batch_size, epochs=1, verbose=0)  # compile, warm up
        started = time.perf_counter()
        model.fit(x, y, batch_size=recipe.batch_size, epochs=epochs, verbose=0)
        seconds = time.perf_counter() - started
    return {"images_per_second": images * epochs / seconds, "replicas": where.replicas,
            "backend": keras.backend.backend()}


def child(backend, kind, replicas, args):
    env = {**os.environ, "KERAS_BACKEND": backend,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={replicas}"}
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--model", args.model,
               "--images", str(args.images), "--epochs", str(args.epochs)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"error: {backend} {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(result):
    lines = ["# Data-parallel scaling", "",
             f"`{result['model']}` (its recipe's optimizer and loss), global batch "
             f"{result['batch_size']}, {result['images']} random images, median of "
             f"{result['rounds']} rounds; {result['machine']['cpu_count']} CPU cores, "
             f"{result['device']}; {result['date']}.", ""]
    if result["shared_cores"]:
        lines += ["The replicas are logical devices on the same CPU cores, so this measures "
                  "the engines' overhead and how well one device uses the cores, not parallel "
                  "hardware: a speedup above 1 means the single-device run left cores idle, "
                  "below 1 that splitting the batch cost more than it gained.", ""]
    lines += markdown_table(
        ["backend", "strategy", "replicas", "images/s", "speedup", "scaling efficiency"],
        [[row["backend"], row["strategy"], row["replicas"], f"{row['images_per_second']:.0f}",
          f"{row['speedup']:.2f}", f"{row['scaling_efficiency']:.2f}"] for row in result["rows"]],
        "llrrrr")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="experiment whose network and optimizer")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"],
                        choices=sorted(STRATEGY))
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "distribute_benchmark.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.child, args.images, args.epochs)))
        return 0
    if args.replicas < 2 or args.rounds < 1:
        parser.error(f"--replicas must be >= 2 and --rounds >= 1; got {args.replicas}, {args.rounds}")

    from benchmarks.augment import machine
    from experiments.recipes import EXPERIMENTS

    if args.model not in EXPERIMENTS:
        parser.error(f"unknown experiment {args.model!r}")
    configs = [(backend, kind, replicas) for backend in args.backends
               for kind, replicas in (("none", 1), (STRATEGY[backend], args.replicas))]
    speeds = {config: [] for config in configs}
    for round_index in range(args.rounds):
        for config in configs:
            measured = child(*config, args)
            speeds[config].append(measured["images_per_second"])
            print(f"round {round_index + 1}: {config[0]:10s} {config[1]:13s} x{measured['replicas']}"
                  f" {measured['images_per_second']:8.0f} images/s", flush=True)
    rows = []
    for backend, kind, replicas in configs:
        speed = statistics.median(speeds[(backend, kind, replicas)])
        single = statistics.median(speeds[(backend, "none", 1)])
        rows.append({"backend": backend, "strategy": kind, "replicas": replicas,
                     "images_per_second": speed, "all_rounds": speeds[(backend, kind, replicas)],
                     "speedup": speed / single, "scaling_efficiency": speed / (replicas * single)})
    from training.machine import device_description

    device = device_description()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "device": device,
              "model": args.model, "batch_size": EXPERIMENTS[args.model].batch_size,
              "images": args.images, "rounds": args.rounds, "shared_cores": device.startswith("CPU"),
              "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_report(args.json, result, table)
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
