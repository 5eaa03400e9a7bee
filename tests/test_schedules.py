"""Each schedule's learning rate at its epoch boundaries, against the papers'
numbers and (where PyTorch is installed) torch's own schedulers."""

import math

import keras
import numpy as np
import pytest

from training import schedules
from training.schedules import lr_at, onecycle_at


def lrs(spec, base, epochs):
    return [lr_at(e, spec, base, epochs) for e in range(epochs)]


def test_kth_step_100_epochs():
    values = lrs({"kind": "kth_step"}, 0.1, 100)
    assert values[:52] == [0.1] * 52
    assert values[52:77] == pytest.approx([0.01] * 25)
    assert values[77:] == pytest.approx([0.001] * 23)


def test_kth_step_50_epochs():
    values = lrs({"kind": "kth_step"}, 0.1, 50)
    assert values[26] == 0.1 and values[27] == pytest.approx(0.01)
    assert values[38] == pytest.approx(0.01) and values[39] == pytest.approx(0.001)


def test_kth_step_matches_the_learning_controller_rule():
    """At the end of epoch e the controller sets 0.01 if e > N/2, 0.001 if e > 3N/4."""
    for epochs in (2, 7, 10, 51, 100, 400):
        lr = 0.1
        for epoch in range(epochs):
            assert lr_at(epoch, {"kind": "kth_step"}, 0.1, epochs) == pytest.approx(lr)
            if epoch > epochs / 2:
                lr = 0.01
            if epoch > 3 * epochs / 4:
                lr = 0.001


def test_step_with_explicit_boundaries():
    spec = {"kind": "step", "boundaries": [3, 5], "values": [1.0, 0.5, 0.25]}
    assert lrs(spec, 1.0, 7) == [1, 1, 1, 0.5, 0.5, 0.25, 0.25]


def test_exponential_mobilenetv2():
    values = lrs({"kind": "exponential", "gamma": 0.98}, 0.045, 200)
    assert values[0] == pytest.approx(0.045)
    assert values[100] == pytest.approx(0.045 * 0.98 ** 100)
    assert values[199] == pytest.approx(0.045 * 0.98 ** 199)


def test_cosine_se_resnet_phases():
    spec = {"kind": "cosine", "t_max": 400}
    assert lr_at(0, spec, 0.1, 415) == pytest.approx(0.1)
    assert lr_at(200, spec, 0.1, 415) == pytest.approx(0.05)
    assert lr_at(400, spec, 0.1, 415) == pytest.approx(0.0, abs=1e-12)
    # PyTorch's cosine is periodic past T_max: the reference's phase-2 values.
    assert lr_at(415, spec, 0.1, 450) == pytest.approx(3.47e-4, rel=0.01)
    assert lr_at(430, spec, 0.1, 450) == pytest.approx(1.4e-3, rel=0.02)
    assert lr_at(449, spec, 0.1, 450) == pytest.approx(3.7e-3, rel=0.02)
    clamped = {**spec, "periodic": False}
    assert lr_at(415, clamped, 0.1, 450) == pytest.approx(0.0, abs=1e-12)


def test_onecycle_row1_reference_values():
    spec = {"kind": "onecycle", "max_lr": 0.1}
    values = lrs(spec, 0.01, 65)
    assert values[0] == pytest.approx(0.004)
    assert int(np.argmax(values)) == 19 and values[19] == pytest.approx(0.1, rel=1e-3)
    assert values[64] == pytest.approx(4e-7, rel=1e-6)
    momenta = [onecycle_at(e, spec, 65)[1] for e in range(65)]
    assert momenta[0] == pytest.approx(0.95) and momenta[64] == pytest.approx(0.95)
    assert min(momenta) == pytest.approx(0.85, abs=1e-3)




def _torch_lrs(make, epochs, base=0.1):
    torch = pytest.importorskip("torch")
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=base, momentum=0.9)
    scheduler = make(torch, optimizer)
    values, momenta = [], []
    for _ in range(epochs):
        values.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return values, momenta


def test_against_torch_schedulers():
    ours = lrs({"kind": "onecycle", "max_lr": 0.1}, 0.01, 65)
    theirs, momenta = _torch_lrs(
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=65), 65, 0.01)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose([onecycle_at(e, {"max_lr": 0.1}, 65)[1] for e in range(65)], momenta,
                               rtol=1e-9)
    ours = lrs({"kind": "cosine", "t_max": 400}, 0.1, 450)
    theirs, _ = _torch_lrs(lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=400), 450)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-10)
    ours = lrs({"kind": "exponential", "gamma": 0.98}, 0.045, 200)
    theirs, _ = _torch_lrs(lambda t, o: t.optim.lr_scheduler.ExponentialLR(o, 0.98), 200, 0.045)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_he_iteration_boundaries():
    schedule = schedules.optimizer_learning_rate(
        {"kind": "step_iterations", "boundaries": [32000, 48000]}, 0.1)
    at = {step: float(schedule(step)) for step in (0, 31999, 32000, 32001, 47999, 48000, 48001, 63999)}
    assert at[0] == pytest.approx(0.1) and at[31999] == pytest.approx(0.1)
    # PiecewiseConstantDecay switches after the boundary step, as torch's MultiStepLR
    # stepped per iteration does (the 32,001st update uses the new rate).
    assert at[32001] == pytest.approx(0.01) and at[47999] == pytest.approx(0.01)
    assert at[48001] == pytest.approx(0.001) and at[63999] == pytest.approx(0.001)


def test_plateau_uses_torch_relative_threshold():
    pytest.importorskip("torch")
    import torch

    # 0.89995 is within the relative threshold of 0.9 (no improvement), 0.8999 is not.
    losses = [1.0, 0.9, 0.89995, 0.8999] + [0.9] * 7 + [0.5] * 9 + [0.49] * 3
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=5)
    expected = []
    for loss in losses:
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step(loss)

    callback = schedules.TorchReduceLROnPlateau(monitor="val_loss", factor=0.1, patience=5)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callback.set_model(model)
    callback.on_train_begin()
    ours = []
    for epoch, loss in enumerate(losses):
        ours.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert len(set(expected)) == 3  # the sequence makes torch reduce twice
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_unknown_kind_and_missing_fields():
    with pytest.raises(ValueError, match="Unknown schedule kind"):
        schedules.validate({"kind": "warmup"}, 10)
    with pytest.raises(ValueError, match="t_max"):
        schedules.validate({"kind": "cosine"}, 10)
    with pytest.raises(ValueError, match="one more value"):
        schedules.validate({"kind": "step", "boundaries": [1, 2], "values": [1.0]}, 10)


def test_schedule_drives_fit_and_lands_in_history():
    """LearningRateScheduler applies lr_at at each epoch start; EpochLog records it."""
    from callbacks import EpochLog

    spec = {"kind": "step", "boundaries": [1, 2]}
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0,
                        callbacks=schedules.schedule_callbacks(spec, 0.5, 3) + [EpochLog()])
    assert history.history["lr"] == pytest.approx([0.5, 0.05, 0.005])
    assert math.isfinite(sum(history.history["seconds"]))


def test_onecycle_reaches_the_momentum_inside_fp16_loss_scaling():
    """Under --precision fp16, compile wraps the optimizer in a LossScaleOptimizer;
    one-cycle must still cycle the wrapped optimizer's momentum."""
    from training.engine import precision_policy
    from training.optimizers import build_optimizer

    spec = {"kind": "onecycle", "max_lr": 0.1}
    with precision_policy("fp16"):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=build_optimizer("sgd", learning_rate=0.01, momentum=0.9), loss="mse")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, verbose=0,
              callbacks=schedules.schedule_callbacks(spec, 0.01, 65))
    lr, momentum = onecycle_at(0, spec, 65)
    inner = model.optimizer.inner_optimizer
    assert float(inner.momentum.numpy()) == pytest.approx(momentum)
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(lr)
    assert momentum != 0.9  # the epoch-0 value differs from the optimizer's own
    assert keras.config.dtype_policy().name == "float32"  # the policy was restored
