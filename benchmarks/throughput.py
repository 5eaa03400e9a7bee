"""Training and inference images/s of each paper's network: Keras against PyTorch.

    python benchmarks/throughput.py [--models EXPERIMENT ...] [--precision fp32 bf16]
        [--steps 8] [--rounds 1] [--no-memory] [--json OUT]

Keras runs the suite's real training step: the experiment's network, optimizer
(PyTorch-style coupled weight decay where the recipe has it), loss and input
pipeline (augmentation, normalisation, mixup) through `model.fit`, as run.py
runs it. PyTorch runs the same network (benchmarks/torch_port.py: the same
layers and parameter count, checked here) with torch.optim's equivalent of the
recipe's optimizer, on batches from the same input pipeline, eager, in NCHW and
in channels-last; Keras with XLA on and off (each framework's faster variant is
compared; all are recorded). Both run in this process with
the same batch, precision and threads, alternating, after warm-up steps.
Inference is `model.predict` against `torch.no_grad()` in eval mode. Peak
memory is measured in a child process per framework and network: peak resident
memory during a few training steps, above what the process held before them. Writes JSON and a markdown table of ratios into reports/.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_MODELS = ["modified_resnet", "resnet_deep", "mobilenetv2", "se_resnet_mixup",
                  "resnet5m_row6", "resnet20"]
BATCH = 128


def resident_mb():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def set_precision(precision):
    import keras

    keras.mixed_precision.set_global_policy(
        {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[precision])


def synthetic_split(images, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, images))


class Case:
    """One experiment: its Keras model and pipeline, and the PyTorch port."""

    def __init__(self, experiment, precision, steps):
        import keras
        import numpy as np
        import torch

        from benchmarks.torch_port import TorchPort, l2_groups, parameter_count
        from data.normalize import Normalizer
        from experiments.recipes import EXPERIMENTS
        from models import build_model, count_params
        from training.engine import RunOptions, compile_model, training_batches

        self.recipe = recipe = EXPERIMENTS[experiment]
        self.precision, self.steps = precision, steps
        self.torch = torch
        images, labels = synthetic_split(BATCH * (steps + 2))  # 2 warm-up steps
        normalizer = Normalizer(**recipe.normalization).fit(images)
        recipe_batch = dataclasses.replace(recipe, batch_size=BATCH)
        self.batches, _ = training_batches(recipe_batch, RunOptions(), normalizer,
                                           (images, labels), (images[:BATCH], labels[:BATCH]), 10)
        self.eval_images = np.ascontiguousarray(self.batches[0][0], dtype="float32")
        set_precision(precision)
        keras.utils.set_random_seed(0)
        self.model = build_model(recipe.model, 10, **recipe.model_args)
        set_precision("fp32")
        self.compile = lambda jit: compile_model(self.model, recipe, recipe.optimizer,
                                                 {"kind": "constant"}, jit_compile=jit)
        self.port = TorchPort(self.model)
        self.params = count_params(self.model)[0]
        if parameter_count(self.port) != self.params:
            raise SystemExit(f"error: the PyTorch port of {experiment} has "
                             f"{parameter_count(self.port):,} parameters, Keras {self.params:,}")
        spec = recipe.optimizer
        groups = l2_groups(self.port, self.model)
        if spec["name"] == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=spec["learning_rate"],
                                             momentum=spec.get("momentum", 0.0),
                                             nesterov=spec.get("nesterov", False),
                                             weight_decay=spec.get("weight_decay", 0.0))
        elif spec["name"] == "adam":
            self.optimizer = torch.optim.Adam(groups, lr=spec["learning_rate"],
                                              weight_decay=spec.get("weight_decay", 0.0))
        else:
            raise SystemExit(f"error: no PyTorch optimizer mapped for {spec['name']!r}")
        self.clipvalue = spec.get("clipvalue")
        self.smoothing = recipe.label_smoothing

    # ---------------------------------------------------------------- Keras
    def keras_train(self, jit="auto"):
        import keras

        from callbacks import EpochLog
        from data.pipeline import EpochSync

        class StepClock(keras.callbacks.Callback):
            """Times steps only: the epoch's setup (iterator, callbacks) is not a step."""

            def __init__(self):
                super().__init__()
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append(time.perf_counter())

        clock = StepClock()
        self.compile(jit)
        self.model.fit(self.batches, epochs=1, steps_per_epoch=self.steps + 2, shuffle=False,
                       verbose=0, callbacks=[EpochSync(self.batches), EpochLog(), clock])
        # Steps 0 and 1 trace and warm up; the timed steps are the ones after.
        return BATCH * self.steps / (clock.ends[-1] - clock.ends[1])

    def keras_infer(self, jit="auto"):
        self.compile(jit)
        images = self.eval_images
        self.model.predict(images, batch_size=BATCH, verbose=0)
        started = time.perf_counter()
        for _ in range(self.steps):
            self.model.predict(images, batch_size=BATCH, verbose=0)
        return BATCH * self.steps / (time.perf_counter() - started)

    # -------------------------------------------------------------- PyTorch
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": self.torch.bfloat16, "fp16": self.torch.float16}[self.precision]
        return self.torch.autocast("cpu", dtype=dtype)

    def _tensor(self, array, layout):
        torch = self.torch
        tensor = torch.from_numpy(array).permute(0, 3, 1, 2)  # NHWC view -> NCHW logical
        return tensor.contiguous(memory_format=layout)

    def torch_train(self, layout, compiled=False):
        torch = self.torch
        port = self.port.to(memory_format=layout).train()
        if compiled:
            port = torch.compile(port)

        def step(index):
            images, labels = self.batches[index % len(self.batches)]
            x = self._tensor(images, layout)
            y = torch.from_numpy(labels)
            with self._autocast():
                loss = torch.nn.functional.cross_entropy(port(x), y, label_smoothing=self.smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clipvalue:
                torch.nn.utils.clip_grad_value_(port.parameters(), self.clipvalue)
            self.optimizer.step()

        for index in range(2):
            step(index)
        started = time.perf_counter()
        for index in range(self.steps):
            step(index)
        return BATCH * self.steps / (time.perf_counter() - started)

    def torch_infer(self, layout):
        torch = self.torch
        port = self.port.to(memory_format=layout).eval()
        x = self._tensor(self.eval_images, layout)
        with torch.no_grad(), self._autocast():
            port(x)
            started = time.perf_counter()
            for _ in range(self.steps):
                port(x)
        return BATCH * self.steps / (time.perf_counter() - started)


def measure(experiment, precision, steps, rounds, torch_compile=False):
    import torch

    case = Case(experiment, precision, steps)
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    jits = {"xla": True, "no_xla": False}  # Keras's "auto" is XLA on TensorFlow
    runs = {key: [] for key in [f"keras_{kind}_{name}" for kind in ("train", "infer") for name in jits]
            + [f"torch_{kind}_{name}" for kind in ("train", "infer") for name in layouts]}
    for _ in range(rounds):  # alternate, so that machine noise hits both frameworks
        for name, jit in jits.items():
            runs[f"keras_train_{name}"].append(case.keras_train(jit))
        for name, layout in layouts.items():
            runs[f"torch_train_{name}"].append(case.torch_train(layout))
        for name, jit in jits.items():
            runs[f"keras_infer_{name}"].append(case.keras_infer(jit))
        for name, layout in layouts.items():
            runs[f"torch_infer_{name}"].append(case.torch_infer(layout))
    if torch_compile:  # reported beside the eager reference, not instead of it
        runs["torch_train_compiled"] = [case.torch_train(torch.channels_last, compiled=True)]
    speed = {key: statistics.median(values) for key, values in runs.items()}
    compiled_speed = speed.pop("torch_train_compiled", None)
    best = {kind: {framework: max(value for key, value in speed.items()
                                  if key.startswith(f"{framework}_{kind}_"))
                   for framework in ("keras", "torch")} for kind in ("train", "infer")}
    return {"network": case.recipe.model, "experiment": experiment, "precision": precision,
            "trainable_params": case.params, "batch": BATCH, **speed,
            "keras_train_ips": best["train"]["keras"], "torch_train_ips": best["train"]["torch"],
            "train_ratio": best["train"]["keras"] / best["train"]["torch"],
            "keras_infer_ips": best["infer"]["keras"], "torch_infer_ips": best["infer"]["torch"],
            "infer_ratio": best["infer"]["keras"] / best["infer"]["torch"],
            "torch_compiled_train_ips": compiled_speed,
            "train_ratio_to_compiled": best["train"]["keras"] / compiled_speed if compiled_speed else None}


def memory_child(framework, experiment, precision, steps):
    """In a child process: peak resident memory while training, above the memory
    held once the data, both models and the optimizers exist."""
    import torch

    import threading

    case = Case(experiment, precision, steps)
    before = resident_mb()
    peak = [before]
    done = threading.Event()

    def sample():  # ru_maxrss would report the import-time peak; sample the current RSS
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if framework == "keras":
        case.keras_train()
    else:
        case.torch_train(torch.channels_last)
    done.set()
    sampler.join()
    return max(peak[0], resident_mb()) - before


def memory(framework, experiment, precision, steps):
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", framework,
               "--models", experiment, "--precision", precision, "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: memory child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def table(result):
    lines = ["# Throughput: Keras against PyTorch", "",
             f"Keras {result['versions']['keras']} ({result['backend']} "
             f"{result['versions'].get(result['backend'], '')}) against PyTorch "
             f"{result['versions']['torch']} (eager; the faster of NCHW and channels-last), "
             f"batch {BATCH}, {result['threads']} threads, {result['device']}, "
             f"{result['steps']} timed steps after warm-up, median of {result['rounds']} "
             f"round(s); {result['date']}.", "",
             "| network | precision | Keras train img/s | PyTorch train img/s | train ratio | "
             "Keras infer img/s | PyTorch infer img/s | infer ratio | Keras peak MiB | "
             "PyTorch peak MiB | memory ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        memory_cells = ("- | - | -" if row.get("keras_peak_mb") is None else
                        f"{row['keras_peak_mb']:.0f} | {row['torch_peak_mb']:.0f} | "
                        f"{row['keras_peak_mb'] / row['torch_peak_mb']:.2f}")
        lines.append(
            f"| {row['experiment']} ({row['trainable_params']:,}) | {row['precision']} | "
            f"{row['keras_train_ips']:.0f} | {row['torch_train_ips']:.0f} | "
            f"**{row['train_ratio']:.2f}** | {row['keras_infer_ips']:.0f} | "
            f"{row['torch_infer_ips']:.0f} | **{row['infer_ratio']:.2f}** | {memory_cells} |")
    lines += ["", "Each variant (images/s; the tables above use the faster of each framework):", "",
              "| network | precision | Keras train XLA | Keras train no XLA | PyTorch train NCHW | "
              "PyTorch train channels-last | Keras infer XLA | Keras infer no XLA | "
              "PyTorch infer NCHW | PyTorch infer channels-last |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['experiment']} | {row['precision']} | " + " | ".join(
            f"{row[key]:.0f}" for key in (
                "keras_train_xla", "keras_train_no_xla", "torch_train_nchw",
                "torch_train_channels_last", "keras_infer_xla", "keras_infer_no_xla",
                "torch_infer_nchw", "torch_infer_channels_last")) + " |")
    compiled = [row for row in result["rows"] if row.get("torch_compiled_train_ips")]
    if compiled:
        lines += ["", "Against torch.compile (training): " + ", ".join(
            f"{row['experiment']} {row['precision']} {row['torch_compiled_train_ips']:.0f} img/s, "
            f"ratio {row['train_ratio_to_compiled']:.2f}" for row in compiled) + "."]
    if result.get("bf16_speedup"):
        lines += ["", "bf16 training speed over fp32: "
                  + ", ".join(f"{name} Keras {k:.2f}x / PyTorch {t:.2f}x"
                              for name, (k, t) in result["bf16_speedup"].items()) + "."]
    lines += ["", "Ratios are Keras / PyTorch (above 1: Keras is faster; for memory, above 1: "
              "Keras uses more). Targets: train and inference ratio >= 1.0, memory ratio <= 1.5, "
              "bf16 training >= 1.5x fp32.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="experiment names")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile'd training (slow to compile on a CPU)")
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "throughput_benchmark.json"))
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps({"peak_mb": memory_child(args.memory_child, args.models[0],
                                                  args.precision[0], args.steps)}))
        return 0
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be >= 1; got {args.steps}, {args.rounds}")
    from experiments.recipes import EXPERIMENTS

    unknown = [name for name in args.models if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; see python experiments/run.py --list")
    import keras
    import torch

    from benchmarks.augment import machine
    from training import record
    from training.engine import device_description

    torch.set_num_threads(os.cpu_count())  # as TensorFlow's default intra-op pool
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "device": device_description(), "backend": keras.backend.backend(),
              "versions": {"keras": keras.__version__, "torch": torch.__version__,
                           keras.backend.backend(): __import__(keras.backend.backend()).__version__,
                           "python": platform.python_version()},
              "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
              "rows": []}
    for precision in args.precision:
        for experiment in args.models:
            row = measure(experiment, precision, args.steps, args.rounds, args.torch_compile)
            if not args.no_memory:
                row["keras_peak_mb"] = memory("keras", experiment, precision, 3)
                row["torch_peak_mb"] = memory("torch", experiment, precision, 3)
            result["rows"].append(row)
            print(f"{experiment:18s} {precision}: train {row['keras_train_ips']:.0f} vs "
                  f"{row['torch_train_ips']:.0f} img/s ({row['train_ratio']:.2f}), infer "
                  f"{row['keras_infer_ips']:.0f} vs {row['torch_infer_ips']:.0f} "
                  f"({row['infer_ratio']:.2f})", flush=True)
    by_key = {(row["experiment"], row["precision"]): row for row in result["rows"]}
    result["bf16_speedup"] = {
        name: (by_key[(name, "bf16")]["keras_train_ips"] / by_key[(name, "fp32")]["keras_train_ips"],
               by_key[(name, "bf16")]["torch_train_ips"] / by_key[(name, "fp32")]["torch_train_ips"])
        for name in args.models if (name, "bf16") in by_key and (name, "fp32") in by_key}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    record.write_json(args.json, result)
    record.atomic_write_text(os.path.splitext(args.json)[0] + ".md", table(result))
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
