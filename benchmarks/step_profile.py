"""Where a training step's time goes, on each augmentation path.

    python benchmarks/step_profile.py resnet_deep [--augment-on host device]
        [--steps 50] [--data-dir DIR] [--set KEY=VALUE] [--json OUT]

For one recipe at its batch size, per path (data/device_augment.py), each a mean
over `--steps` batches after two warm-up steps:
  input      building one batch on the host (one thread)
  transfer   its arrays onto the device, waited for
  compute    one compiled training step on a batch already on the device
             (train_on_batch: the step and its per-call host overhead)
  fit step   one step of model.fit on the batches, as a run trains (one input thread)
  gap        fit step - compute - transfer: input not hidden, dispatch, idle device
Writes JSON and a markdown table (reports/step_profile_<device>.{json,md} by default).
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402


def _wait(tree):
    """Blocks until the device has computed every tensor in `tree`."""
    import keras

    for value in keras.tree.flatten(tree):
        keras.ops.convert_to_numpy(keras.ops.ravel(value)[:1])


def _mean_seconds(action, steps):
    action(0)
    action(1)  # warm-up: tracing, compilation, allocation
    started = time.perf_counter()
    for index in range(steps):
        action(2 + index)
    return (time.perf_counter() - started) / steps


def profile_path(recipe, path, data, steps):
    """The timings of one path, in milliseconds per batch."""
    import keras

    from callbacks import EpochSync
    from data import device_augment
    from models import build_model
    from training.engine import RunOptions, compile_model, training_batches

    train, val, num_classes = data
    normalizer = recipe.normalization.build().fit(train[0])
    options = RunOptions(input_threads=1, augment_on=path)
    batches, _ = training_batches(recipe, options, normalizer, train, val, num_classes, path)
    keras.utils.set_random_seed(0)
    model = build_model(recipe.model, num_classes, **recipe.model_args)
    trainer = (device_augment.training_model(model, batches, normalizer) if path == "device"
               else model)
    compile_model(trainer, recipe, recipe.optimizer, {"kind": "constant"})
    count = len(batches)
    needed = steps + 2
    if count < needed:
        raise SystemExit(f"error: {needed} batches needed, the training set gives {count}; "
                         f"pass fewer --steps or more training images.")
    input_s = _mean_seconds(lambda i: batches.batch(0, i), steps)
    host = [batches.batch(0, i) for i in range(3)]
    transfer_s = _mean_seconds(lambda i: _wait(keras.tree.map_structure(
        keras.ops.convert_to_tensor, host[min(i, 2)])), steps)
    on_device = keras.tree.map_structure(keras.ops.convert_to_tensor, host[0])
    compute_s = _mean_seconds(lambda i: trainer.train_on_batch(*on_device), steps)

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            keras.ops.convert_to_numpy(logs["loss"])  # the step has finished, not only started
            self.ends.append(time.perf_counter())

    clock = Clock()
    trainer.fit(batches, epochs=1, steps_per_epoch=needed, shuffle=False, verbose=0,
                callbacks=[EpochSync(batches), clock])
    fit_s = (clock.ends[-1] - clock.ends[1]) / steps
    batches.close()
    milliseconds = {"input": input_s, "transfer": transfer_s, "compute": compute_s,
                    "fit_step": fit_s, "gap": fit_s - compute_s - transfer_s}
    return {"path": path, "batch_size": recipe.batch_size,
            "images_per_second": recipe.batch_size / fit_s,
            "ms": {key: 1000 * value for key, value in milliseconds.items()}}


def table(result):
    lines = ["# One training step, by part", "",
             f"{result['experiment']} at batch {result['cases'][0]['batch_size']} on the "
             f"{result['backend']} backend, {result['device']}; {result['date']}. Milliseconds "
             f"per batch, means over {result['steps']} steps after two warm-up steps "
             f"(benchmarks/step_profile.py). Data: {result['data']}.", ""]
    rows = [[case["path"], *(f"{case['ms'][key]:.2f}" for key in
                             ("input", "transfer", "compute", "fit_step", "gap")),
             f"{case['images_per_second']:,.0f}"] for case in result["cases"]]
    lines += markdown_table(["path", "input (host)", "transfer", "compute", "fit step", "gap",
                             "images/s in fit"], rows, "lrrrrrr")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--augment-on", nargs="+", default=["host", "device"],
                        choices=("host", "device"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--data-dir", help="local CIFAR copy, as run.py takes it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe edit, as run.py takes it")
    parser.add_argument("--json", help="default: reports/step_profile_<device>.json")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1; got {args.steps}")
    import keras

    from experiments.recipes import EXPERIMENTS
    from training.engine import RunOptions, prepare_data
    from training.machine import device_description
    from training.recipe import apply_overrides

    if args.experiment not in EXPERIMENTS:
        parser.error(f"unknown experiment {args.experiment!r}; see python experiments/run.py --list")
    recipe = apply_overrides(EXPERIMENTS[args.experiment], args.set)
    data, train, val, _ = prepare_data(recipe, RunOptions(data_dir=args.data_dir))
    device = device_description()
    slug = "cpu" if device.startswith("CPU") else device.split(" x ")[-1].split()[-1].lower()
    path = args.json or os.path.join(ROOT, "reports", f"step_profile_{slug}.json")
    result = {"experiment": recipe.name, "date": time.strftime("%Y-%m-%d %H:%M"),
              "backend": keras.backend.backend(), "device": device, "steps": args.steps,
              "set": args.set, "data": data.source, "cases": []}
    for augment_path in args.augment_on:
        case = profile_path(recipe, augment_path, (train, val, data.num_classes), args.steps)
        result["cases"].append(case)
        print(f"{augment_path}: " + ", ".join(f"{key} {value:.2f} ms"
                                              for key, value in case["ms"].items()), flush=True)
        write_report(path, result, table)
    print(f"wrote {path} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
