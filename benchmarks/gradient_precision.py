"""How close are a network's float32 gradients to exact ones? One training-mode batch.

    KERAS_BACKEND=torch python benchmarks/gradient_precision.py [EXPERIMENT ...]
        [--batch 32] [--seed 0] [--json reports/gradient_precision.json]

For each experiment's network (no dropout), with its initial weights, the
cross-entropy gradient of one batch of standard-normal images with random labels
in float32 through: the suite's fast path (models/native.py, what run.py trains
with on PyTorch), Keras's own ops (the recipe's `fast_path` off) and the PyTorch
twin of benchmarks/torch_port.py. Each is compared with the twin's float64
gradient as the exact one: the relative L2 error over all parameters, and which
tensor holds the largest share of it. A wrong backward pass shows as an error
near 1, float32 rounding as one of 1e-2 or less. Needs the PyTorch backend and
torch (requirements-bench.txt).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks.tables import markdown_table, write_report  # noqa: E402

DEFAULT_EXPERIMENTS = ("se_resnet_mixup", "resnet20", "modified_resnet", "mobilenetv2",
                       "resnet5m_row6")  # the parity cases' networks without dropout
WAYS = ("fast_path", "keras_ops", "torch_float32")


def keras_gradients(model, images, labels):
    """{(layer, weight): float64 gradient} of the mean cross-entropy, training mode,
    kernels in the twin's layout."""
    import torch

    from benchmarks.torch_port import keras_state

    for variable in model.trainable_variables:
        variable.value.grad = None
    logits = model(torch.from_numpy(images), training=True)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(labels))
    loss.backward()
    return keras_state(model, lambda weight: weight.value.grad.detach().double().numpy(),
                       trainable_only=True)


def twin_gradients(twin, images, labels, dtype):
    """The same for the PyTorch twin, keyed like keras_gradients; converts the twin
    to `dtype` in place (float32 weights survive the round trip through float64)."""
    import torch

    from benchmarks.torch_port import named_state

    twin = twin.to(dtype).train()
    twin.zero_grad()
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(dtype)
    loss = torch.nn.functional.cross_entropy(twin(batch), torch.from_numpy(labels))
    loss.backward()
    return {key: parameter.grad.detach().double().numpy()
            for key, parameter in named_state(twin).items()}


def compare(gradients, exact):
    """(relative L2 error over all parameters, the tensor with the largest share of the
    squared error, that share). A tensor's own relative error is no measure: some
    exact gradients are zero (a BatchNorm's beta before a 1x1 conv and another
    BatchNorm), so their float32 values divide by nothing."""
    errors, total = {}, 0.0
    for key, expected in exact.items():
        got = gradients[key]
        if got.shape != expected.shape:  # never broadcast one layout against another
            raise ValueError(f"{'/'.join(key)}: gradient of shape {got.shape} where the "
                             f"twin has {expected.shape}.")
        errors["/".join(key)] = float(np.sum((got - expected) ** 2))
        total += float(np.sum(expected ** 2))
    error = sum(errors.values())
    largest = max(errors, key=errors.get)
    return (error / total) ** 0.5, largest, errors[largest] / error if error else 0.0


def starting_point(recipe, name, count, seed):
    """(`count` standard-normal images, random labels, the recipe's network at its
    seeded initial weights); refuses a network with dropout, whose masks differ
    between Keras and the twin."""
    import keras

    from models import build_model

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((count, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, count)
    keras.utils.set_random_seed(seed)
    model = build_model(recipe.model, 10, **recipe.model_args)
    if any(isinstance(layer, keras.layers.Dropout) for layer in model.layers):
        raise SystemExit(f"{name}: its network has dropout, whose masks differ between "
                         "Keras and the twin; pick one without dropout.")
    return images, labels, model


def measure(experiment, batch=32, seed=0):
    import keras
    import torch

    from benchmarks.torch_port import TorchPort, copy_weights
    from experiments.recipes import EXPERIMENTS
    from models import build_model, native

    if keras.backend.backend() != "torch":
        raise SystemExit("gradient_precision.py needs the PyTorch backend: "
                         "run it with KERAS_BACKEND=torch.")
    recipe = EXPERIMENTS[experiment]
    images, labels, model = starting_point(recipe, experiment, batch, seed)
    twin = copy_weights(TorchPort(model), model)
    exact = twin_gradients(twin, images, labels, torch.float64)
    row = {"experiment": experiment, "model": recipe.model, "batch": batch, "seed": seed}
    saved = native.NATIVE_TORCH
    try:
        for way, switch in (("fast_path", True), ("keras_ops", False)):
            native.NATIVE_TORCH = switch  # read as the network is built and called
            built = build_model(recipe.model, 10, **recipe.model_args)
            built.set_weights(model.get_weights())
            row[way] = compare(keras_gradients(built, images, labels), exact)
    finally:
        native.NATIVE_TORCH = saved
    row["torch_float32"] = compare(twin_gradients(twin, images, labels, torch.float32), exact)
    return row


def render(result):
    header = ["experiment", "batch"] + [f"{way} (largest share)" for way in WAYS]
    rows = [[row["experiment"], row["batch"]]
            + [f"{row[way][0]:.2e} ({row[way][1]} {100 * row[way][2]:.0f}%)" for way in WAYS]
            for row in result["rows"]]
    return "\n".join([
        "# Gradient precision: float32 against float64",
        "",
        "Relative L2 error of one batch's float32 gradient against the float64 one of "
        "the PyTorch twin (benchmarks/gradient_precision.py), over all parameters; in "
        "brackets the tensor with the largest share of the squared error. `fast_path` "
        "is what run.py trains with on the PyTorch backend, `keras_ops` Keras's own "
        "layers (the recipe's fast_path off), `torch_float32` the PyTorch twin. "
        f"Standard-normal images, random labels, initial weights. Versions: {result['versions']}.",
        "",
        *markdown_table(header, rows, "lr" + "l" * len(WAYS)),
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiments", nargs="*", default=list(DEFAULT_EXPERIMENTS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "gradient_precision.json"))
    args = parser.parse_args(argv)
    from experiments.recipes import EXPERIMENTS

    unknown = [name for name in args.experiments if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; see `python experiments/run.py --list`.")
    import keras
    import torch

    rows = []
    for experiment in args.experiments:
        rows.append(measure(experiment, args.batch, args.seed))
        print(experiment, {way: f"{rows[-1][way][0]:.2e}" for way in WAYS}, flush=True)
    result = {"rows": rows, "versions": f"keras {keras.__version__}, torch {torch.__version__}"}
    write_report(args.json, result, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
