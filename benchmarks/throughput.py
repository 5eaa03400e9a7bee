"""Training and inference images/s of each paper's network: Keras against PyTorch.

    python benchmarks/throughput.py [--models EXPERIMENT ...] [--precision fp32 bf16]
        [--steps 8] [--rounds 1] [--batch-size 128] [--no-memory] [--json OUT]

Keras runs the suite's real training step: the experiment's network, optimizer
(PyTorch-style coupled weight decay where the recipe has it), loss and input
pipeline (augmentation, normalisation, mixup) through `model.fit`, as run.py
runs it. PyTorch runs the same network (benchmarks/torch_port.py: the same
layers and parameter count, checked here) with torch.optim's equivalent of the
recipe's optimizer, on batches from the same input pipeline, eager, in NCHW and
in channels-last; Keras with XLA on and off (each framework's faster variant is
compared; all are recorded). Both run in this process with
the same batch, precision and threads, alternating, after warm-up steps.
Inference is `model.predict` over NumPy images against a `torch.no_grad()`
eval-mode loop that takes the same NumPy batches and returns NumPy logits. Peak
memory is measured in a child process per framework and network: peak resident
memory during a few training steps, above what the process held before them; on
a GPU, the peak of the framework's own device allocator over those steps.
Writes JSON and a markdown table of ratios into reports/.
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
BATCH = 128  # images per step unless --batch-size says otherwise



def resident_mb():
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_description():
    """The CPU's model and the vector extensions that decide fp32 and bf16 speed."""
    from training.machine import cpu_flags, cpu_model

    model = cpu_model() or platform.processor() or platform.machine()
    flags = cpu_flags()
    if flags is None:
        return model
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return f"{model} ({', '.join(flag for flag in wanted if flag in flags) or 'no AVX2'})"


def synthetic_split(images, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, images))


class Case:
    """One experiment: its Keras model and pipeline, and the PyTorch port."""

    def __init__(self, experiment, precision, steps, batch=BATCH):
        import keras
        import numpy as np
        import torch

        from benchmarks.torch_port import TorchPort, parameter_count
        from experiments.recipes import EXPERIMENTS
        from models import build_model, count_params
        from training.engine import RunOptions, compile_model, precision_policy, training_batches

        self.recipe = recipe = EXPERIMENTS[experiment]
        self.experiment = experiment
        self.precision, self.steps, self.batch = precision, steps, batch
        self.torch = torch
        images, labels = synthetic_split(batch * (steps + 2))  # 2 warm-up steps
        normalizer = recipe.normalization.build().fit(images)
        recipe_batch = dataclasses.replace(recipe, batch_size=batch)
        self.batches, _ = training_batches(recipe_batch, RunOptions(), normalizer,
                                           (images, labels), (images[:batch], labels[:batch]), 10)
        self.eval_images = np.ascontiguousarray(self.batches[0][0], dtype="float32")
        keras.utils.set_random_seed(0)
        with precision_policy(precision):  # as run.py --precision builds it
            self.model = build_model(recipe.model, 10, **recipe.model_args)
        self.compile = lambda jit: compile_model(self.model, recipe, recipe.optimizer,
                                                 {"kind": "constant"}, jit_compile=jit)
        # PyTorch on the GPU where there is one (as Keras's JAX and PyTorch backends
        # place themselves), else on the CPU.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.port = TorchPort(self.model).to(self.device)
        self.params = count_params(self.model)[0]
        if parameter_count(self.port) != self.params:
            raise SystemExit(f"error: the PyTorch port of {experiment} has "
                             f"{parameter_count(self.port):,} parameters, Keras {self.params:,}")
        if recipe.optimizer.kind not in ("sgd", "adam"):
            raise SystemExit(f"error: no PyTorch optimizer mapped for {recipe.optimizer.kind!r}")
        self.clipvalue = recipe.optimizer.clipvalue
        self.smoothing = recipe.label_smoothing

    # ---------------------------------------------------------------- Keras
    def keras_train(self, jit="auto"):
        import keras

        from callbacks import EpochLog
        from callbacks import EpochSync

        class StepClock(keras.callbacks.Callback):
            """Times steps only: the epoch's setup (iterator, callbacks) is not a step."""

            def __init__(self):
                super().__init__()
                self.ends = []

            def on_train_batch_end(self, batch, logs=None):
                # The step's loss as a number: on an accelerator the step has
                # then finished, not only been dispatched.
                keras.ops.convert_to_numpy(logs["loss"])
                self.ends.append(time.perf_counter())

        clock = StepClock()
        self.compile(jit)
        self.model.fit(self.batches, epochs=1, steps_per_epoch=self.steps + 2, shuffle=False,
                       verbose=0, callbacks=[EpochSync(self.batches), EpochLog(), clock])
        # Steps 0 and 1 trace and warm up; the timed steps are the ones after.
        return self.batch * self.steps / (clock.ends[-1] - clock.ends[1])

    def keras_infer(self, jit="auto"):
        import numpy as np

        self.compile(jit)
        self.model.predict(self.eval_images, batch_size=self.batch, verbose=0)  # traces
        # One predict over `steps` batches, as a user predicts a dataset (a call
        # per batch would time predict's per-call setup instead).
        images = np.concatenate([self.eval_images] * self.steps)
        started = time.perf_counter()
        self.model.predict(images, batch_size=self.batch, verbose=0)
        return len(images) / (time.perf_counter() - started)

    # -------------------------------------------------------------- PyTorch
    def torch_optimizer(self):
        """torch.optim's form of the recipe's optimizer, new for each timed run:
        its momentum buffers then take the layout being timed (buffers left in
        NCHW from an earlier run halve channels-last training, measured)."""
        from benchmarks.torch_port import l2_groups

        spec, torch = self.recipe.optimizer, self.torch
        groups = l2_groups(self.port, self.model)
        if spec.kind == "sgd":
            return torch.optim.SGD(groups, lr=spec.learning_rate, momentum=spec.momentum,
                                   nesterov=spec.nesterov, weight_decay=spec.weight_decay)
        return torch.optim.Adam(groups, lr=spec.learning_rate, weight_decay=spec.weight_decay)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = {"bf16": self.torch.bfloat16, "fp16": self.torch.float16}[self.precision]
        return self.torch.autocast(self.device, dtype=dtype)

    def _tensor(self, array, layout):
        torch = self.torch
        tensor = torch.from_numpy(array).to(self.device).permute(0, 3, 1, 2)  # NCHW logical
        return tensor.contiguous(memory_format=layout)

    def _synchronize(self):
        if self.device == "cuda":  # kernels run asynchronously: wait before reading the clock
            self.torch.cuda.synchronize()

    def _compiled(self, port):
        """torch.compile(port), compiled afresh: dynamo caches compilations per
        code object (TorchPort.forward, shared by every network) and, past its
        recompile limit (8), runs the function eagerly without saying so in the
        result; it did so from the fifth network on before this reset."""
        self.torch._dynamo.reset()
        return self.torch.compile(port)

    def torch_train(self, layout, compiled=False):
        torch = self.torch
        port = self.port.to(memory_format=layout).train()
        optimizer = self.torch_optimizer()
        if compiled:
            port = self._compiled(port)

        def step(index):
            images, labels = self.batches[index % len(self.batches)]
            if self.batches.label_column:  # mixup runs' own-label column (training.losses)
                labels = labels[:, :-1]
            x = self._tensor(images, layout)
            y = torch.from_numpy(labels).to(self.device)
            with self._autocast():
                loss = torch.nn.functional.cross_entropy(port(x), y, label_smoothing=self.smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clipvalue:
                torch.nn.utils.clip_grad_value_(port.parameters(), self.clipvalue)
            optimizer.step()

        for index in range(2):
            step(index)
        self._synchronize()
        started = time.perf_counter()
        for index in range(self.steps):
            step(index)
        self._synchronize()
        return self.batch * self.steps / (time.perf_counter() - started)

    def torch_infer(self, layout, compiled=False):
        """A PyTorch evaluation loop over the same images as keras_infer's predict:
        each batch from NumPy into the layout, the logits back to NumPy."""
        torch = self.torch
        port = self.port.to(memory_format=layout).eval()
        if compiled:
            port = self._compiled(port)

        def predict(batches):
            with torch.no_grad(), self._autocast():
                for _ in range(batches):
                    port(self._tensor(self.eval_images, layout)).float().cpu().numpy()

        predict(2)  # warm-up (and compilation)
        started = time.perf_counter()
        predict(self.steps)
        return self.batch * self.steps / (time.perf_counter() - started)


# Keras's compile modes worth timing per backend (jit_compile): XLA on and off on
# TensorFlow ("auto" is XLA); JAX always compiles; PyTorch's jit_compile=True is
# torch.compile through Keras, which trained slower than eager here (resnet20
# 229-261 against 320-343 img/s), so eager is what run.py uses and what is timed.
KERAS_VARIANTS = {"tensorflow": {"xla": True, "no_xla": False}, "jax": {"xla": True},
                  "torch": {"eager": False}}
VARIANT_COLUMNS = [("keras_train_xla", "Keras train XLA"), ("keras_train_no_xla", "Keras train no XLA"),
                   ("keras_train_eager", "Keras train eager"), ("torch_train_nchw", "PyTorch train NCHW"),
                   ("torch_train_channels_last", "PyTorch train channels-last"),
                   ("keras_infer_xla", "Keras infer XLA"), ("keras_infer_no_xla", "Keras infer no XLA"),
                   ("keras_infer_eager", "Keras infer eager"), ("torch_infer_nchw", "PyTorch infer NCHW"),
                   ("torch_infer_channels_last", "PyTorch infer channels-last")]


def measure(experiment, precisions, steps, rounds, torch_compile=False, batch=BATCH):
    """One row per precision for `experiment`. Each round times every
    precision's Keras and PyTorch runs in turn, so that a bf16 row's speed-up
    over fp32 is paired by round, as each row's Keras/PyTorch ratio is (rows
    timed minutes apart moved with the machine's load: ResNet-20's bf16/fp32
    was 1.35x to 1.60x in four runs)."""
    cases = {precision: Case(experiment, precision, steps, batch) for precision in precisions}
    runs = {precision: {} for precision in precisions}
    for round_index in range(rounds):
        # Alternate which precision, and which framework, goes first each round
        # (the first run after another meets the heap and caches that run left).
        order = precisions if round_index % 2 == 0 else precisions[::-1]
        for precision in order:
            time_round(cases[precision], runs[precision], round_index)
    rows, fastest = {}, {}
    for precision in precisions:
        rows[precision], fastest[precision] = summarize(cases[precision], runs[precision],
                                                        rounds, torch_compile)
    if "fp32" in rows:
        for precision, row in rows.items():
            if precision != "fp32":  # this precision's speed over fp32, round by round
                for framework in ("keras", "torch"):
                    row[f"{framework}_train_over_fp32_rounds"] = [
                        mine / theirs for mine, theirs in zip(
                            runs[precision][fastest[precision][framework]],
                            runs["fp32"][fastest["fp32"][framework]])]
    return list(rows.values())


def time_round(case, runs, round_index):
    """One round of `case`: training, then inference, each framework's variants in
    turn; appends images/s to `runs` (per variant key)."""
    import keras
    import torch

    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    variants = {"keras": KERAS_VARIANTS[keras.backend.backend()], "torch": layouts}
    timers = {("keras", "train"): case.keras_train, ("keras", "infer"): case.keras_infer,
              ("torch", "train"): case.torch_train, ("torch", "infer"): case.torch_infer}
    order = ("keras", "torch") if round_index % 2 == 0 else ("torch", "keras")
    for kind in ("train", "infer"):
        for framework in order:
            for name, setting in variants[framework].items():
                runs.setdefault(f"{framework}_{kind}_{name}", []).append(
                    timers[framework, kind](setting))


def summarize(case, runs, rounds, torch_compile):
    """(A row: each variant's median, each framework's fastest, their ratios;
    {framework: its fastest training variant's key in `runs`})."""
    import keras
    import torch

    runs = dict(runs)
    if torch_compile:  # reported beside the eager reference, not instead of it
        runs["torch_train_compiled"] = [case.torch_train(torch.channels_last, compiled=True)]
        runs["torch_infer_compiled"] = [case.torch_infer(torch.channels_last, compiled=True)]
    speed = {key: statistics.median(values) for key, values in runs.items()}
    compiled = {kind: speed.pop(f"torch_{kind}_compiled", None) for kind in ("train", "infer")}
    # The variant each framework is reported by: its fastest by median.
    fastest = {kind: {framework: max((key for key in speed if key.startswith(f"{framework}_{kind}_")),
                                     key=speed.get)
                      for framework in ("keras", "torch")} for kind in ("train", "infer")}
    best = {kind: {framework: speed[key] for framework, key in fastest[kind].items()}
            for kind in ("train", "infer")}
    # Each round's own ratio of those two variants, timed next to each other: their
    # range is the run-to-run spread, and the ratio of the medians lies within it.
    round_ratios = {kind: [runs[fastest[kind]["keras"]][index] / runs[fastest[kind]["torch"]][index]
                           for index in range(rounds)] for kind in ("train", "infer")}
    row = {"network": case.recipe.model, "experiment": case.experiment,
           "precision": case.precision, "backend": keras.backend.backend(),
           "trainable_params": case.params, "batch": case.batch, **speed,
           "keras_train_ips": best["train"]["keras"], "torch_train_ips": best["train"]["torch"],
           "train_ratio": best["train"]["keras"] / best["train"]["torch"],
           "keras_infer_ips": best["infer"]["keras"], "torch_infer_ips": best["infer"]["torch"],
           "infer_ratio": best["infer"]["keras"] / best["infer"]["torch"],
           "train_ratio_rounds": round_ratios["train"], "infer_ratio_rounds": round_ratios["infer"],
           **{f"torch_compiled_{kind}_ips": compiled[kind] for kind in compiled},
           **{f"{kind}_ratio_to_compiled": best[kind]["keras"] / compiled[kind] if compiled[kind]
              else None for kind in compiled}}
    return row, fastest["train"]


def tune_allocator(args):
    """As run.py does (training/allocator.py); for the whole process, so PyTorch
    runs under the same malloc settings as Keras. --default-malloc skips it."""
    import keras

    from training import allocator

    return False if args.default_malloc else allocator.tune_for_backend(keras.backend.backend())


def memory_child(framework, experiment, precision, steps, batch=BATCH):
    """In a child process: peak resident memory while training, above the memory
    held once the data, both models and the optimizers exist."""
    import torch

    import threading

    case = Case(experiment, precision, steps, batch)
    if case.device == "cuda":  # the step's memory is the GPU's; the host's barely moves
        return device_peak_mb(framework, case)
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


def device_peak_mb(framework, case):
    """On a GPU: the peak of the allocator the framework trains through, above what
    it held before the steps. Both allocators count the bytes they hand out, not
    what they reserve (JAX reserves most of the GPU when it starts). JAX's peak
    cannot be reset, so a higher peak while the models were built would count
    too; a training step's activations are far larger than the weights."""
    import keras

    allocator = keras.backend.backend() if framework == "keras" else "torch"
    if allocator == "jax":
        import jax

        device = jax.local_devices()[0]
        before = device.memory_stats()["bytes_in_use"]
        case.keras_train()
        return (device.memory_stats()["peak_bytes_in_use"] - before) / 2**20
    if allocator == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
        before = tf.config.experimental.get_memory_info("GPU:0")["current"]
        case.keras_train()
        return (tf.config.experimental.get_memory_info("GPU:0")["peak"] - before) / 2**20
    # PyTorch itself, or Keras on its backend: torch's caching allocator.
    torch = case.torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    if framework == "keras":
        case.keras_train()
    else:
        case.torch_train(torch.channels_last)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def memory(framework, experiment, precision, steps, default_malloc, batch=BATCH):
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", framework,
               "--models", experiment, "--precision", precision, "--steps", str(steps),
               "--batch-size", str(batch),
               *(["--default-malloc"] if default_malloc else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: memory child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def best_rows(rows):
    """Per network and precision: the row of the Keras backend that trained fastest."""
    best = {}
    for row in rows:
        key = (row["experiment"], row["precision"])
        if key not in best or row["keras_train_ips"] > best[key]["keras_train_ips"]:
            best[key] = row
    return list(best.values())


def bf16_speedup(rows):
    """{network: [Keras bf16 / fp32 training speed, PyTorch's, Keras's rounds]} where
    both were measured: the median of the rounds' own ratios where the two
    precisions were timed round by round (measure), else the ratio of the rows."""
    by_key = {(row["experiment"], row["precision"]): row for row in best_rows(rows)}
    names = dict.fromkeys(row["experiment"] for row in rows)
    speedups = {}
    for name in names:
        if (name, "bf16") not in by_key or (name, "fp32") not in by_key:
            continue
        half, full = by_key[name, "bf16"], by_key[name, "fp32"]
        paired = (half.get("keras_train_over_fp32_rounds")
                  if half["backend"] == full["backend"] else None)
        if paired:
            speedups[name] = [statistics.median(paired),
                              statistics.median(half["torch_train_over_fp32_rounds"]), paired]
        else:
            speedups[name] = [half["keras_train_ips"] / full["keras_train_ips"],
                              half["torch_train_ips"] / full["torch_train_ips"], []]
    return speedups


def merge(paths):
    """One report from several runs' JSON (on a machine whose calls are time-limited,
    one run per network or precision): their rows together, the first run's setting."""
    from training import record

    reports = [record.read_json(path) for path in paths]
    result = dict(reports[0])
    result["rows"] = [row for report in reports for row in report["rows"]]
    batches = sorted({row["batch"] for row in result["rows"]})
    if len(batches) > 1:  # a table of ratios names one batch
        raise SystemExit(f"error: these reports were measured at batch sizes {batches}; "
                         "merge runs of one batch size (--batch-size) into one report")
    result["batch"] = batches[0]
    # A report that is itself a merge lists its own runs (merging into it adds runs).
    result["merged_from"] = [run for report in reports for run in report.get("merged_from") or [
        {"date": report["date"], "models": sorted({row["experiment"] for row in report["rows"]})}]]
    result["date"] = min(report["date"] for report in reports)
    result["bf16_speedup"] = bf16_speedup(result["rows"])
    return result


def spread(values):
    """' (low-high)' of per-round values, where there were several rounds; else ''."""
    return f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""


def round_range(row, kind):
    """spread() of a row's per-round Keras/PyTorch ratios."""
    return spread(row.get(f"{kind}_ratio_rounds") or [])


def table(result):
    versions = result["versions"]
    # Reports from before --batch-size name the batch in their rows only.
    batch = result.get("batch") or result["rows"][0]["batch"]
    lines = ["# Throughput: Keras against PyTorch", "",
             f"Keras {versions['keras']} on each backend ({', '.join(result['backends'])}) "
             f"against PyTorch {versions['torch']} (eager; the faster of NCHW and channels-last), "
             f"measured in the same process as each backend's Keras, alternating; batch {batch}, "
             f"{result['threads']} threads, {result['device']}, {result.get('cpu', '')}, "
             f"{result['steps']} timed steps "
             f"after warm-up, median of {result['rounds']} round(s); {result['date']}. "
             f"Training batches are built by {result.get('input_threads', 1)} input thread(s) "
             "ahead of the step, as run.py builds them (data/pipeline.py), for both frameworks.",
             "",
             *([f"Joined from {len(result['merged_from'])} runs of this setting "
                "(benchmarks/throughput.py --merge): "
                + "; ".join(f"{', '.join(run['models'])} at {run['date']}"
                            for run in result["merged_from"]) + ".", ""]
               if result.get("merged_from") else []),
             "glibc keeps freed memory for reuse (training/allocator.py, as run.py sets it; "
             "both frameworks share the process): "
             + ", ".join(f"{backend} {'yes' if kept else 'no'}" for backend, kept
                         in result.get("malloc_keeps_freed_memory", {}).items()) + ".", "",
             "Best Keras backend per network:", "",
             "| network | precision | backend | Keras train img/s | PyTorch train img/s | "
             "train ratio | Keras infer img/s | PyTorch infer img/s | infer ratio | "
             "Keras peak MiB | PyTorch peak MiB | memory ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in best_rows(result["rows"]):
        memory_cells = ("- | - | -" if row.get("keras_peak_mb") is None else
                        f"{row['keras_peak_mb']:.0f} | {row['torch_peak_mb']:.0f} | "
                        f"{row['keras_peak_mb'] / row['torch_peak_mb']:.2f}")
        lines.append(
            f"| {row['experiment']} ({row['trainable_params']:,}) | {row['precision']} | "
            f"{row['backend']} | {row['keras_train_ips']:.0f} | {row['torch_train_ips']:.0f} | "
            f"**{row['train_ratio']:.2f}**{round_range(row, 'train')} | {row['keras_infer_ips']:.0f} | "
            f"{row['torch_infer_ips']:.0f} | **{row['infer_ratio']:.2f}**{round_range(row, 'infer')} | "
            f"{memory_cells} |")
    lines += ["", "Every backend and variant (images/s; - where a variant does not apply):", "",
              "| network | precision | backend | train ratio | infer ratio | "
              + " | ".join(title for _, title in VARIANT_COLUMNS) + " |",
              "|---|---|---|---:|---:|" + "---:|" * len(VARIANT_COLUMNS)]
    for row in result["rows"]:
        lines.append(f"| {row['experiment']} | {row['precision']} | {row['backend']} | "
                     f"{row['train_ratio']:.2f} | {row['infer_ratio']:.2f} | " + " | ".join(
                         f"{row[key]:.0f}" if row.get(key) else "-"
                         for key, _ in VARIANT_COLUMNS) + " |")
    compiled = [row for row in result["rows"] if row.get("torch_compiled_train_ips")]
    if compiled:
        lines += ["", "Against torch.compile (PyTorch 2's compiler, channels-last; Keras as above):",
                  "", "| network | precision | backend | compiled train img/s | train ratio | "
                  "compiled infer img/s | infer ratio |", "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {row['experiment']} | {row['precision']} | {row['backend']} | "
                  f"{row['torch_compiled_train_ips']:.0f} | {row['train_ratio_to_compiled']:.2f} | "
                  f"{row['torch_compiled_infer_ips']:.0f} | {row['infer_ratio_to_compiled']:.2f} |"
                  for row in compiled]
    if result.get("bf16_speedup"):
        # [Keras, PyTorch, Keras's paired rounds]; reports from before the pairing
        # hold [Keras, PyTorch].
        speedups = {name: (entry + [[]])[:3] for name, entry in result["bf16_speedup"].items()}
        paired = any(rounds for _, _, rounds in speedups.values())
        lines += ["", "bf16 training speed over fp32"
                  + (" (median of each round's own ratio, both precisions timed in every round; "
                     "Keras's range of rounds after it)" if paired else "") + ": "
                  + ", ".join(f"{name} Keras {keras_speedup:.2f}x{spread(rounds)} / PyTorch "
                              f"{torch_speedup:.2f}x" for name, (keras_speedup, torch_speedup, rounds)
                              in speedups.items()) + "."]
    lines += ["", "Ratios are Keras / PyTorch (above 1: Keras is faster; for memory, above 1: "
              "Keras uses more; peak memory is resident memory on a CPU, the framework's "
              "device allocator on a GPU, over a few training steps in a child process); "
              "a ratio's median is followed, where there were several rounds, "
              "by the range of the rounds' own ratios (each round times both frameworks). "
              "Targets: train and inference ratio >= 1.0, memory ratio <= 1.5, "
              "bf16 training >= 1.5x fp32.", "",
              "What was tried to close the gaps, and what each gave: "
              "[throughput_notes.md](throughput_notes.md).", ""]
    return "\n".join(lines)


def backend_rows(args):
    """In a child whose KERAS_BACKEND is set: every row for that backend."""
    import torch
    import torch._dynamo  # noqa: F401  torch.optim loads it, and with it Triton's LLVM:
    # loaded after TensorFlow's, that crashed the process (exit -11, torch 2.14.1's build)
    import keras

    torch.set_num_threads(os.cpu_count())  # as TensorFlow's and XLA's default pools
    malloc = tune_allocator(args)
    rows = []
    for experiment in args.models:
        for row in measure(experiment, args.precision, args.steps, args.rounds,
                           args.torch_compile, args.batch_size):
            precision = row["precision"]
            if not args.no_memory:
                row["keras_peak_mb"] = memory("keras", experiment, precision, 3, args.default_malloc,
                                              args.batch_size)
                row["torch_peak_mb"] = memory("torch", experiment, precision, 3, args.default_malloc,
                                              args.batch_size)
            rows.append(row)
            print(f"{experiment:18s} {precision} {row['backend']:10s}: train "
                  f"{row['keras_train_ips']:.0f} vs {row['torch_train_ips']:.0f} img/s "
                  f"({row['train_ratio']:.2f}), infer {row['keras_infer_ips']:.0f} vs "
                  f"{row['torch_infer_ips']:.0f} ({row['infer_ratio']:.2f})", flush=True)
    # The table lists one precision's rows, then the next's.
    rows.sort(key=lambda row: args.precision.index(row["precision"]))
    backend = keras.backend.backend()
    return {"rows": rows, "threads": torch.get_num_threads(), "malloc_keeps_freed_memory": malloc,
            "versions": {"keras": keras.__version__, "torch": torch.__version__,
                         backend: __import__(backend).__version__}}


def write_report(path, result):
    """The report's JSON at `path` and its markdown table beside it."""
    from benchmarks.tables import write_report as write

    write(path, result, table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="experiment names")
    parser.add_argument("--backends", nargs="+", default=list(KERAS_VARIANTS),
                        choices=list(KERAS_VARIANTS), help="Keras backends to time (one child each)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=BATCH,
                        help=f"images per step, for both frameworks (default {BATCH})")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time torch.compile'd training and inference (slow to compile "
                             "on a CPU)")
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "throughput_benchmark.json"))
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (run.py raises them "
                             "on the PyTorch backend; see training/allocator.py)")
    parser.add_argument("--merge", nargs="+", metavar="REPORT.json",
                        help="measure nothing: join these reports' rows (runs of the same "
                             "setting, e.g. one per network) into --json and its .md table")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--backend-child", help=argparse.SUPPRESS)  # JSON output path
    args = parser.parse_args(argv)
    if args.memory_child:
        tune_allocator(args)
        print(json.dumps({"peak_mb": memory_child(args.memory_child, args.models[0],
                                                  args.precision[0], args.steps,
                                                  args.batch_size)}))
        return 0
    if args.backend_child:
        with open(args.backend_child, "w") as stream:
            json.dump(backend_rows(args), stream)
        return 0
    if args.merge:
        write_report(args.json, merge(args.merge))
        print(f"wrote {args.json} and its .md table")
        return 0
    if args.steps < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error(f"--steps, --rounds and --batch-size must be >= 1; got {args.steps}, "
                     f"{args.rounds}, {args.batch_size}")
    from experiments.recipes import EXPERIMENTS

    unknown = [name for name in args.models if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; see python experiments/run.py --list")
    import tempfile

    from benchmarks.augment import machine
    from data.pipeline import input_threads
    from training.machine import device_description

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "device": device_description(), "cpu": cpu_description(), "backends": args.backends,
              "versions": {"python": platform.python_version()},
              "steps": args.steps, "rounds": args.rounds, "batch": args.batch_size,
              "rows": [],
              "input_threads": input_threads()}
    child_args = list(argv if argv is not None else sys.argv[1:])
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as folder:
            output = os.path.join(folder, "rows.json")
            command = [sys.executable, os.path.abspath(__file__), *child_args,
                       "--backend-child", output]
            child = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend})
            if child.returncode != 0:
                raise SystemExit(f"error: the {backend} measurements failed (exit "
                                 f"{child.returncode}); see the messages above.")
            with open(output) as stream:
                part = json.load(stream)
        result["rows"] += part["rows"]
        result["versions"].update(part["versions"])
        result["threads"] = part["threads"]
        result.setdefault("malloc_keeps_freed_memory", {})[backend] = part["malloc_keeps_freed_memory"]
    result["bf16_speedup"] = bf16_speedup(result["rows"])
    write_report(args.json, result)
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
