"""Does run.py take the authors' training steps? A few updates, both ways, compared.

    KERAS_BACKEND=torch python benchmarks/step_parity.py [CASE ...] [--steps 3]
        [--batch 32] [--seed 0] [--json reports/step_parity.json]

For each parity case (benchmarks/parity.py) whose network has no dropout: the
suite's network at its initial weights and its PyTorch twin (torch_port.py) with
the same weights take the same `--steps` batches of standard-normal images with
random labels. The Keras side is run.py's step: the recipe compiled by
training.engine.compile_model (its optimizer, clipping, loss), the batches from
data.pipeline.CifarBatches with the recipe's mixup, `train_on_batch` through the
fast path. The twin takes the paper's own step (benchmarks/reference/: its
optimizer and scheduler, clipping and mixup loss), in float32 and in float64,
handed the Mixer's lambda and partner where the paper drew its own. Against the
float64 run: the relative L2 error of the change in the trainable weights over
the steps, and of the change in BatchNorm's moving statistics. Float32 rounding
reads as the twin's own float32 error; a different step (another clipping order,
decay, loss or moving-variance rule) reads far above it. Needs the PyTorch
backend, torch and torchvision (requirements-bench.txt).
"""

import argparse
import contextlib
import os
import sys
import types
from unittest import mock

os.environ.setdefault("KERAS_BACKEND", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks.tables import markdown_table, write_report  # noqa: E402

DEFAULT_CASES = ("se_resnet_mixup", "resnet20", "modified_resnet", "mobilenetv2",
                 "resnet5m_row6")  # the parity cases whose networks have no dropout
PARTS = ("weights", "statistics")


def weights_of(model):
    """Every weight of `model` as float64, keyed as the twin's (torch_port)."""
    from benchmarks.torch_port import keras_state

    return keras_state(model, lambda weight: np.asarray(weight.numpy(), dtype=np.float64))


def twin_state(twin):
    from benchmarks.torch_port import named_state

    return {key: tensor.detach().double().numpy().copy()
            for key, tensor in named_state(twin, statistics=True).items()}


def changes(before, after):
    """({key: change} of the trainable weights, the same of the moving statistics)."""
    moving = {key: after[key] - before[key] for key in after if key[1].startswith("moving_")}
    return {key: after[key] - before[key] for key in after if key not in moving}, moving


@contextlib.contextmanager
def handed_draws(draws):
    """The paper's own mixup draws (the epoch gate np.random.rand, torch.randperm,
    np.random.beta) replaced by the suite's Mixer's: `draws` holds one (lam,
    partner) per batch, or is None where the Mixer left the epoch unmixed."""
    import torch

    lams = iter([lam for lam, _ in draws or []])
    partners = iter([partner for _, partner in draws or []])
    with mock.patch.object(np.random, "rand", lambda *_: 0.0 if draws else 1.0), \
            mock.patch.object(np.random, "beta", lambda *_, **__: next(lams)), \
            mock.patch.object(torch, "randperm",
                              lambda *_, **__: torch.from_numpy(next(partners))):
        yield


def keras_steps(recipe, model, images, labels, batch, seed):
    """run.py's training step on each batch in turn; after each, the trainable
    weights' and the moving statistics' changes so far."""
    from data.pipeline import CifarBatches
    from training.engine import compile_model

    compile_model(model, recipe, recipe.optimizer, recipe.schedule)
    batches = CifarBatches(images, labels, 10, batch, mix=recipe.mixup, seed=seed,
                           label_column=bool(recipe.mixup))
    before, after = weights_of(model), []
    for index in range(len(batches)):
        model.train_on_batch(*batches.batch(0, index))
        after.append(changes(before, weights_of(model)))
    return after


def reference_steps(paper, spec, twin, images, labels, batch, draws, dtype):
    """The paper's training step on the twin in `dtype`, one batch at a time (its
    epoch loop on a one-batch loader); changes as keras_steps."""
    import torch
    from common import train_one_epoch

    twin = twin.to(dtype)
    optimizer = paper.optimizer(twin, spec)
    scheduler = paper.scheduler(optimizer, spec)
    before, after = twin_state(twin), []
    with handed_draws(draws):
        for start in range(0, len(images), batch):
            loader = [(torch.from_numpy(images[start:start + batch].transpose(0, 3, 1, 2)
                                        .copy()).to(dtype),
                       torch.from_numpy(labels[start:start + batch]))]
            train_one_epoch(paper, twin, loader, optimizer, scheduler, spec, 0)
            after.append(changes(before, twin_state(twin)))
    return after


def measure(case_name, steps=3, batch=32, seed=0):
    import keras
    import torch

    from benchmarks import parity
    from benchmarks.gradient_precision import compare, starting_point
    from benchmarks.torch_port import TorchPort, copy_weights
    from experiments.recipes import EXPERIMENTS
    from models import native
    from training.recipe import apply_overrides

    if keras.backend.backend() != "torch":
        raise SystemExit("step_parity.py needs the PyTorch backend: "
                         "run it with KERAS_BACKEND=torch.")
    case = parity.CASES[case_name]
    # Both sides at the parity case's default size: its compressed schedule, of
    # which these steps are the first.
    sizes = types.SimpleNamespace(epochs=4, train_images=5000, eval_images=0, data_dir=None)
    edits, numbers = parity.compressed(EXPERIMENTS[case.experiment], case, sizes.epochs,
                                       sizes.train_images)
    recipe = apply_overrides(EXPERIMENTS[case.experiment], edits)
    spec = parity.reference_spec(case, sizes, numbers, seed)
    native.NATIVE_TORCH = recipe.fast_path  # as run.py sets it before building
    images, labels, model = starting_point(recipe, case_name, steps * batch, seed)
    draws = None
    if recipe.mixup and recipe.mixup.epoch_is_mixed(seed, 0):
        draws = [recipe.mixup.draw(seed, 0, index, batch)[:2] for index in range(steps)]
    paper = parity.reference_paper(case)
    twin = copy_weights(TorchPort(model), model)
    exact = reference_steps(paper, spec, twin, images, labels, batch, draws, torch.float64)
    twin = copy_weights(TorchPort(model), model)
    ways = {"torch_float32": reference_steps(paper, spec, twin, images, labels, batch, draws,
                                             torch.float32),
            "keras": keras_steps(recipe, model, images, labels, batch, seed)}
    row = {"case": case_name, "steps": steps, "batch": batch, "seed": seed,
           "mixed": draws is not None}
    for way, got in ways.items():
        for index, part in enumerate(PARTS):
            row[f"{way}_{part}"] = [compare(step[index], wanted[index])[0]
                                    for step, wanted in zip(got, exact)]
    return row


def render(result):
    steps = max(row["steps"] for row in result["rows"])
    header = ["case", "batch", "mixup", "part"] + [f"after step {k}" for k in range(1, steps + 1)]
    rows = [[row["case"], row["batch"], "yes" if row["mixed"] else "no", part]
            + [f"{keras:.1e} ({twin:.1e})" for keras, twin in
               zip(row[f"keras_{part}"], row[f"torch_float32_{part}"])]
            for row in result["rows"] for part in PARTS]
    return "\n".join([
        "# Step parity: run.py's training step against the authors'",
        "",
        "Relative L2 error, against the authors' step in float64 on the PyTorch twin, of "
        "the change since the initial weights in the trainable weights (`weights`) and in "
        "BatchNorm's moving statistics (`statistics`) (benchmarks/step_parity.py). Each "
        "cell: run.py's step (the recipe compiled as run.py compiles it, its mixup, the "
        "fast path), and in brackets the authors' step in float32, the size of rounding "
        "alone. Standard-normal images, random labels, the Mixer's draws handed to both "
        f"sides. Versions: {result['versions']}.",
        "",
        *markdown_table(header, rows, "lrll" + "r" * steps),
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", default=list(DEFAULT_CASES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "step_parity.json"))
    args = parser.parse_args(argv)
    from benchmarks import parity

    unknown = [case for case in args.cases if case not in parity.CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected some of {sorted(parity.CASES)}")
    import keras
    import torch

    rows = []
    for case in args.cases:
        rows.append(measure(case, args.steps, args.batch, args.seed))
        print(" ".join(f"{key}={value}" for key, value in rows[-1].items()
                       if not isinstance(value, list)),
              *(f"{key}=" + ",".join(f"{v:.1e}" for v in value)
                for key, value in rows[-1].items() if isinstance(value, list)), flush=True)
    result = {"rows": rows, "versions": f"keras {keras.__version__}, torch {torch.__version__}"}
    write_report(args.json, result, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
