"""The torch-style optimizers: one step by hand, then several against torch.optim."""

import keras
import numpy as np
import pytest

from training.optimizers import TorchSGD, build_optimizer


def apply(optimizer, weights, grads_per_step, lrs=None):
    variables = [keras.Variable(np.array(w, np.float32)) for w in weights]
    optimizer.build(variables)
    for step, grads in enumerate(grads_per_step):
        if lrs is not None:
            optimizer.learning_rate = lrs[step]
        optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(np.array(g, np.float32))
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


@pytest.mark.parametrize("name, kwargs", [
    ("sgd", dict(momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-4)),
    ("adam", dict(weight_decay=1e-4)),
    ("adagrad", dict(weight_decay=1e-4)),
    ("rmsprop", dict(weight_decay=1e-4)),
])
def test_matches_torch_over_steps_with_a_learning_rate_change(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(6)]
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01] if name == "sgd" else [1e-3] * 3 + [1e-4] * 3
    ours = build_optimizer(name, learning_rate=lrs[0], **kwargs)
    (got,) = apply(ours, [w0], [[g] for g in grads], lrs)

    weight = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    options = {"lr": lrs[0], "weight_decay": kwargs.get("weight_decay", 0.0)}
    if name == "sgd":
        options.update(momentum=kwargs["momentum"], nesterov=kwargs.get("nesterov", False))
    reference = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad,
                 "rmsprop": torch.optim.RMSprop}[name]([weight], **options)
    for lr, g in zip(lrs, grads):
        for group in reference.param_groups:
            group["lr"] = lr
        weight.grad = torch.tensor(g, dtype=torch.float64)
        reference.step()
    # Adam/Adagrad/RMSprop place epsilon differently in Keras; it is tiny next to these gradients.
    np.testing.assert_allclose(got, weight.detach().numpy(), rtol=2e-5, atol=1e-6)


def test_keras_style_rejects_coupled_decay():
    with pytest.raises(ValueError, match="per-layer L2"):
        build_optimizer("sgd", learning_rate=0.1, style="keras", weight_decay=1e-4)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        build_optimizer("lion", learning_rate=0.1)


@pytest.mark.parametrize("style", ["torch", "keras"])
def test_each_optimizer_reads_the_momentum_fields_the_recipe_check_allows(style):
    """MOMENTUM_FIELDS, which the recipe check uses to refuse unread fields, is what
    build_optimizer passes on: a momentum an optimizer is said to read reaches it."""
    from training.optimizers import MOMENTUM_FIELDS

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


def test_torch_adam_places_epsilon_as_keras_does():
    """With gradients near epsilon, where its placement decides the step: without
    decay, TorchAdam is Keras's Adam with PyTorch's epsilon (on the PyTorch
    backend's CPU path too, whose kernel adds epsilon after the bias correction)."""
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(3, 4))
    grads = [[rng.normal(size=(3, 4)) * scale] for scale in (1e-8, 1e-7, 1.0, 1e-8, 1e-9)]
    (ours,) = apply(build_optimizer("adam", learning_rate=1e-3), [w0], grads)
    (keras_adam,) = apply(keras.optimizers.Adam(1e-3, epsilon=1e-8), [w0], grads)
    np.testing.assert_allclose(ours - w0, keras_adam - w0, rtol=1e-3, atol=3e-7)


def test_optimizers_on_the_torch_backend():
    """This file's tests again under KERAS_BACKEND=torch, where the updates take
    the multi-tensor path above (the suite itself runs on TensorFlow)."""
    pytest.importorskip("torch")
    if keras.backend.backend() == "torch":
        pytest.skip("already running on the PyTorch backend")
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    # Every test but this one ran there, the multi-tensor and fused ones included.
    assert "1 skipped" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]


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
