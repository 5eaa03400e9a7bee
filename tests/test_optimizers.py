"""The torch-style optimizers: one step by hand, then several against torch.optim."""

import keras
import numpy as np
import pytest

from training.optimizers import TorchSGD, build_optimizer


def apply(optimizer, weights, grads_per_step, lrs=None, dtype="float32"):
    variables = [keras.Variable(np.array(w, dtype), dtype=dtype) for w in weights]
    optimizer.build(variables)
    for step, grads in enumerate(grads_per_step):
        if lrs is not None:
            optimizer.learning_rate = lrs[step]
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(np.array(g, dtype))
                                       for g in grads], variables))
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_sgd_momentum_coupled_decay_by_hand():
    """PyTorch: g' = g + wd*w; b = m*b + g'; w -= lr*b (b starts at g')."""
    lr, m, wd = 0.1, 0.9, 0.01
    w0, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    b1 = g1 + wd * w0
    w1 = w0 - lr * b1
    b2 = m * b1 + (g2 + wd * w1)
    w2 = w1 - lr * b2
    (got,) = apply(TorchSGD(lr, momentum=m, coupled_weight_decay=wd), [w0], [[g1], [g2]])
    np.testing.assert_allclose(got, w2, rtol=1e-6)
    # Keras's own decay is decoupled and gives another answer: the reason TorchSGD exists.
    (keras_got,) = apply(keras.optimizers.SGD(lr, momentum=m, weight_decay=wd), [w0], [[g1], [g2]])
    assert not np.allclose(keras_got, w2, rtol=1e-6)


def test_clipping_comes_before_the_decay():
    w0, g = np.array([10.0]), np.array([5.0])
    (got,) = apply(TorchSGD(1.0, coupled_weight_decay=0.1, clipvalue=0.1), [w0], [[g]])
    np.testing.assert_allclose(got, w0 - (0.1 + 0.1 * 10.0), rtol=1e-6)


# JAX computes in float32 unless x64 is enabled (the suite's JAX run enables it).
FLOAT64 = "float32" if keras.backend.backend() == "jax" and not __import__(
    "jax").config.jax_enable_x64 else "float64"

TORCH_CASES = [  # SGD's momentum lives in a float32 variable: 0.875 is exact there
    ("sgd", dict(momentum=0.875, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.875, nesterov=True, weight_decay=1e-4)),
    ("adam", dict(weight_decay=1e-4)),
    ("adam", dict()),
    ("adagrad", dict(weight_decay=1e-4)),
    ("rmsprop", dict(weight_decay=1e-4)),
    ("rmsprop", dict(momentum=0.9)),
]


def torch_reference(name, kwargs, w0, grads, lrs):
    """torch.optim's update of float64 `w0` over `grads`, the rate set before each step."""
    import torch

    weight = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    options = {"lr": lrs[0], "weight_decay": kwargs.get("weight_decay", 0.0)}
    if name == "sgd":
        options.update(momentum=kwargs["momentum"], nesterov=kwargs.get("nesterov", False))
    if name == "rmsprop":
        options.update(momentum=kwargs.get("momentum", 0.0))
    reference = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad,
                 "rmsprop": torch.optim.RMSprop}[name]([weight], **options)
    for lr, g in zip(lrs, grads):
        for group in reference.param_groups:
            group["lr"] = lr
        weight.grad = torch.tensor(g, dtype=torch.float64)
        reference.step()
    return weight.detach().numpy()


@pytest.mark.parametrize("name, kwargs", TORCH_CASES)
def test_matches_torch_over_steps_with_a_learning_rate_change(name, kwargs):
    """Six steps with a rate change, on gradients from 1e-9 to 1 in size: where
    the gradients are near epsilon its placement decides the step (Keras's Adam
    moved such weights by up to 70% of the rate more than torch's). Small weights,
    in float64 (where the backend has it), so that rounding stays far below a
    millionth of the rate and the test sees the update rule alone."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 6))
    scales = np.array([1e-9, 1e-8, 1e-7, 1e-3, 1.0, 3.0])[None, :]
    grads = [rng.normal(size=(4, 6)) * scales for _ in range(6)]
    # Powers of two: Keras keeps the rate in a float32 variable, where 1e-3 reads
    # 1.00000005e-3, and RMSprop's first steps are ten times the rate.
    lrs = [2.0**-3] * 3 + [2.0**-6] * 3 if name == "sgd" else [2.0**-10] * 3 + [2.0**-13] * 3
    ours = build_optimizer(name, learning_rate=lrs[0], **kwargs)
    (got,) = apply(ours, [w0], [[g] for g in grads], lrs, dtype=FLOAT64)
    expected = torch_reference(name, kwargs, w0, grads, lrs)
    assert np.max(np.abs(got - expected)) <= 1e-6 * max(lrs), np.max(np.abs(got - expected))


@pytest.mark.parametrize("name, keras_class", [("adam", keras.optimizers.Adam),
                                                ("adagrad", keras.optimizers.Adagrad),
                                                ("rmsprop", keras.optimizers.RMSprop)])
def test_keras_places_epsilon_elsewhere(name, keras_class):
    """The reason these classes exist: Keras's own optimizer with PyTorch's
    epsilon and rate moves tiny-gradient weights by a sizeable share of the rate
    more than torch.optim does."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(3, 4)) * 1e-3
    grads = [rng.normal(size=(3, 4)) * 1e-8 for _ in range(3)]
    lr = 1e-3
    epsilon = {"adam": 1e-8, "adagrad": 1e-10, "rmsprop": 1e-8}[name]
    extra = {"rmsprop": dict(rho=0.99), "adagrad": dict(initial_accumulator_value=0.0)}
    (keras_got,) = apply(keras_class(lr, epsilon=epsilon, **extra.get(name, {})), [w0],
                         [[g] for g in grads])
    expected = torch_reference(name, {}, w0, grads, [lr] * 3)
    assert np.max(np.abs(keras_got - expected)) > 0.05 * lr


def test_keras_style_rejects_coupled_decay():
    from training.optimizer_specs import SGD

    with pytest.raises(ValueError, match="per-layer L2"):
        SGD(learning_rate=0.1, style="keras", weight_decay=1e-4).check()
    with pytest.raises(ValueError, match="per-layer L2"):
        SGD(learning_rate=0.1, style="keras", weight_decay=1e-4).build()
    with pytest.raises(ValueError, match="Unknown optimizer 'lion'"):
        build_optimizer("lion", learning_rate=0.1)


@pytest.mark.parametrize("style", ["torch", "keras"])
def test_each_optimizer_reads_the_momentum_fields_the_recipe_check_allows(style):
    """MOMENTUM_FIELDS, which the recipe check uses to refuse unread fields, is what
    build_optimizer passes on: a momentum an optimizer is said to read reaches it."""
    from training.optimizer_specs import MOMENTUM_FIELDS

    for name, fields in MOMENTUM_FIELDS.items():
        optimizer = build_optimizer(name, learning_rate=0.1, style=style, momentum=0.5,
                                    nesterov="nesterov" in fields)
        optimizer.build([keras.Variable(np.zeros(2, "float32"))])
        momentum = getattr(optimizer, "momentum", None)
        if isinstance(momentum, keras.Variable):
            momentum = float(keras.ops.convert_to_numpy(momentum))
        assert (momentum == 0.5) == ("momentum" in fields), (name, style, momentum)
        assert getattr(optimizer, "nesterov", False) == ("nesterov" in fields)


def test_momentum_is_a_variable_one_cycle_can_change():
    optimizer = TorchSGD(0.1, momentum=0.95)
    (w,) = apply(optimizer, [np.zeros(1)], [])
    optimizer.momentum.assign(0.85)
    assert float(keras.ops.convert_to_numpy(optimizer.momentum)) == pytest.approx(0.85)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the PyTorch backend's path")
@pytest.mark.parametrize("name, kwargs", [
    ("sgd", dict(momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-4)),
    ("adam", dict(weight_decay=1e-4)),
])
def test_torch_backend_updates_all_variables_at_once(name, kwargs, monkeypatch):
    """On PyTorch the update is one multi-tensor pass: the per-variable
    update_step is never called, and two variables update as one would alone."""
    optimizer = build_optimizer(name, learning_rate=0.1, **kwargs)

    def per_variable(*args):
        raise AssertionError("per-variable update_step called on the PyTorch backend")

    monkeypatch.setattr(type(optimizer), "update_step", per_variable)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=(2, 3)), rng.normal(size=(4,))]
    grads = [[rng.normal(size=w.shape) for w in weights] for _ in range(3)]
    together = apply(optimizer, weights, grads)
    monkeypatch.undo()
    for index, weight in enumerate(weights):
        (alone,) = apply(build_optimizer(name, learning_rate=0.1, **kwargs), [weight],
                         [[step[index]] for step in grads])
        np.testing.assert_allclose(together[index], alone, rtol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_optimizers_on_the_other_backends(backend):
    """This file's tests again under KERAS_BACKEND=torch, where the updates take
    the multi-tensor and fused paths, and under JAX (with float64 enabled, for the
    comparison with torch.optim); the suite itself runs on TensorFlow."""
    pytest.importorskip("torch")
    pytest.importorskip(backend)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("run from the TensorFlow suite")
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         os.path.abspath(__file__)],
        env={**os.environ, "KERAS_BACKEND": backend, "JAX_ENABLE_X64": "1"},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " failed" not in result.stdout and " passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the PyTorch backend's path")
@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad", "rmsprop"])
def test_torch_backend_reads_a_gradient_in_any_layout(name):
    """The fused and multi-tensor kernels walk memory in order: a transposed
    (non-contiguous) gradient must give the update its values give."""
    import torch

    rng = np.random.default_rng(4)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(2)]

    def run(transposed):
        optimizer = build_optimizer(name, learning_rate=0.1, momentum=0.9 * (name == "sgd"),
                                    weight_decay=1e-3)
        variable = keras.Variable(np.array(w0, np.float32))
        optimizer.build([variable])
        for g in grads:
            tensor = torch.tensor(g.T.copy() if transposed else g, dtype=torch.float32)
            tensor = tensor.T if transposed else tensor
            assert tensor.is_contiguous() != transposed
            optimizer.apply_gradients([(tensor, variable)])
        return keras.ops.convert_to_numpy(variable)

    np.testing.assert_array_equal(run(True), run(False))


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the PyTorch backend's path")
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_torch_backend_clips_with_torch_clamp(name, monkeypatch):
    """On PyTorch, clipvalue clips each gradient with torch.clamp, not through
    Keras's ops.clip (which calls torch.clip), and gives clip_grad_value_'s
    answer; the gradients handed in are left as they were."""
    import torch

    rng = np.random.default_rng(3)
    weights = [rng.normal(size=(2, 3)), rng.normal(size=(4,))]
    grads = [rng.normal(size=w.shape) * 3 for w in weights]
    optimizer = build_optimizer(name, learning_rate=0.1, momentum=0.0, weight_decay=1e-3,
                                clipvalue=0.5)
    given = [torch.tensor(g, dtype=torch.float32) for g in grads]
    monkeypatch.setattr(torch, "clip", lambda *args, **kwargs: pytest.fail("torch.clip called"))
    clipped = optimizer._clip_gradients(given + [None])
    monkeypatch.undo()
    assert clipped[-1] is None
    for got, g, tensor in zip(clipped, grads, given):
        np.testing.assert_array_equal(got.numpy(), np.clip(g, -0.5, 0.5).astype(np.float32))
        np.testing.assert_array_equal(tensor.numpy(), g.astype(np.float32))
    together = apply(optimizer, weights, [grads])
    for index, weight in enumerate(weights):
        reference = torch.nn.Parameter(torch.tensor(weight, dtype=torch.float32))
        reference.grad = torch.tensor(grads[index], dtype=torch.float32)
        torch.nn.utils.clip_grad_value_([reference], 0.5)
        options = {"lr": 0.1, "weight_decay": 1e-3}
        step = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)([reference], **options)
        step.step()
        np.testing.assert_allclose(together[index], reference.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
