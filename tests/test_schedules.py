"""Each schedule's learning rate at its epoch boundaries, against the papers'
numbers and (where PyTorch is installed) torch's own schedulers."""

import math

import keras
import numpy as np
import pytest

from callbacks.schedules import TorchReduceLROnPlateau
from foundation.spec import classes
from experiments.recipes import EXPERIMENTS
from training import schedules
from training.schedules import Plateau, schedule


def lr_at(epoch, spec, base, epochs):
    return schedule(spec).lr_at(epoch, base, epochs)


def onecycle_at(epoch, spec, epochs):
    return schedule({**spec, "kind": "onecycle"}).at(epoch, epochs)


def optimizer_learning_rate(spec, base):
    return schedule(spec).optimizer_rate(base)


def schedule_callbacks(spec, base, epochs):
    return schedule(spec).callbacks(base, epochs)


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


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no updates here
def test_he_iteration_boundaries_match_multistep_stepped_per_iteration():
    """torch's MultiStepLR([32000, 48000]) stepped after each update: the update
    made after 32,000 updates (iterations == 32000 in Keras) already uses 0.01."""
    torch = pytest.importorskip("torch")
    schedule = optimizer_learning_rate(
        {"kind": "step_iterations", "boundaries": [32000, 48000]}, 0.1)
    steps = [0, 1, 31999, 32000, 32001, 47999, 48000, 48001, 63999]
    ours = [float(keras.ops.convert_to_numpy(schedule(step))) for step in steps]
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [32000, 48000])
    theirs = {}
    for done in range(64000):  # the rate of the update made after `done` updates
        if done in steps:
            theirs[done] = optimizer.param_groups[0]["lr"]
        scheduler.step()
    np.testing.assert_allclose(ours, [theirs[step] for step in steps], rtol=1e-6)
    assert ours[steps.index(31999)] == pytest.approx(0.1)
    assert ours[steps.index(32000)] == pytest.approx(0.01)
    # resnet110's warm-up: 0.01 for 400 updates, then He et al.'s schedule.
    warm = optimizer_learning_rate(EXPERIMENTS["resnet110"].schedule, 0.1)
    rates = {step: float(keras.ops.convert_to_numpy(warm(step)))
             for step in (0, 399, 400, 31999, 32000, 48000)}
    assert rates == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01,
                                   48000: 0.001})


def _plateau_against_torch(losses, **options):
    """The rate before each epoch under torch's ReduceLROnPlateau and under ours."""
    import torch

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    expected = []
    for loss in losses:
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step(loss)

    callback = TorchReduceLROnPlateau(Plateau(monitor="val_loss", **options))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callback.set_model(model)
    callback.on_train_begin()
    ours = []
    for epoch, loss in enumerate(losses):
        ours.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        callback.on_epoch_end(epoch, {"val_loss": loss})
    return ours, expected


def test_plateau_uses_torch_relative_threshold():
    pytest.importorskip("torch")
    # 0.89995 is within the relative threshold of 0.9 (no improvement), 0.8999 is not.
    losses = [1.0, 0.9, 0.89995, 0.8999] + [0.9] * 7 + [0.5] * 9 + [0.49] * 3
    ours, expected = _plateau_against_torch(losses, factor=0.1, patience=5)
    assert len(set(expected)) == 3  # the sequence makes torch reduce twice
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


@pytest.mark.parametrize("options", [dict(factor=0.1, patience=5),
                                     dict(factor=0.1, patience=2, cooldown=3),
                                     dict(factor=0.5, patience=0, min_lr=1e-6)])
def test_plateau_stops_where_torch_stops(options):
    """60 flat epochs: torch skips a reduction smaller than its eps (1e-8), so the
    rate stays at 1e-8 (Keras's callback went on to 1e-9 after 37 epochs); cooldown
    and min_lr as torch counts them."""
    pytest.importorskip("torch")
    ours, expected = _plateau_against_torch([1.0] * 60, **options)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert min(ours) >= 1e-8 * (1 - 1e-6)


def test_unknown_kind_and_missing_fields():
    with pytest.raises(ValueError, match="Unknown schedule kind"):
        schedules.validate({"kind": "warmup"}, 10)
    with pytest.raises(ValueError, match="t_max"):
        schedules.validate({"kind": "cosine"}, 10)
    with pytest.raises(ValueError, match="one more than its boundaries"):
        schedules.validate({"kind": "step", "boundaries": [1, 2], "values": [1.0]}, 10)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "kth_step", "patience": 3}, "does not use ['patience']; it takes factor, values"),
    ({"kind": "constant", "gamma": 0.9}, "it takes no other field"),
    ({"kind": "cosine", "t_max": "abc"}, "schedule.t_max must be a number of epochs > 0"),
    ({"kind": "cosine", "t_max": 0}, "schedule.t_max must be"),
    ({"kind": "cosine", "t_max": 10, "periodic": "no"}, "schedule.periodic must be true or false"),
    ({"kind": "exponential", "gamma": -0.5}, "schedule.gamma must be a number > 0"),
    ({"kind": "step", "boundaries": [5, 2.5]}, "schedule.boundaries must be a list of whole"),
    ({"kind": "step", "boundaries": [5, 2]}, "boundaries must increase"),
    ({"kind": "step", "boundaries": [5], "factor": True}, "schedule.factor must be a number"),
    ({"kind": "kth_step", "values": [0.1, 0.01]}, "needs 3 values"),
    ({"kind": "plateau", "factor": 2.0}, "below 1 for plateau"),
    ({"kind": "plateau", "patience": 2.5}, "schedule.patience must be a whole number"),
    ({"kind": "onecycle", "max_lr": 0.1, "total": 5}, "must cover the 10 epochs"),
    ({"kind": "onecycle", "max_lr": 0.1, "pct_start": 0.1}, "pct_start * total must not be 1"),
])
def test_fields_a_kind_cannot_use_are_refused(spec, message):
    """A field the kind does not read, or a value it cannot run, fails before training,
    not silently or at the first epoch."""
    with pytest.raises(ValueError) as error:
        schedules.validate(spec, 10)
    assert message in str(error.value)


def test_every_field_a_kind_takes_is_read():
    """The fields a kind declares are what lr_at, the callbacks and the optimizer schedule read: setting
    each listed field to a second valid value changes the rates the kind gives."""
    second = {"boundaries": [3], "values": [0.5, 0.05], "factor": 0.5, "gamma": 0.5,
              "t_max": 4, "eta_min": 0.01, "periodic": False, "max_lr": 0.2, "total": 12,
              "pct_start": 0.5, "div_factor": 5.0, "final_div_factor": 10.0,
              "base_momentum": 0.5, "max_momentum": 0.9}
    base = {"step": {"boundaries": [5]}, "kth_step": {}, "exponential": {"gamma": 0.9},
            "cosine": {"t_max": 6}, "onecycle": {"max_lr": 0.1},
            "step_iterations": {"boundaries": [5]}}
    for kind, fields in {kind: cls.field_names() for kind, cls in classes("schedule").items()}.items():
        if kind in ("constant", "plateau"):  # plateau's fields go to its callback, below
            continue
        for field in fields:
            spec = {"kind": kind, **base[kind]}
            edited = {**spec, field: second[field]}
            if field == "values":  # one more value than the kind's boundaries
                boundaries = spec.get("boundaries") or schedules.KthStep().boundaries_for(10)
                edited["values"] = [0.5] + [0.05] * len(boundaries)
            schedules.validate(edited, 10)
            if kind == "step_iterations":
                rates = [[float(optimizer_learning_rate(s, 0.1)(step)) for step in range(10)]
                         for s in (spec, edited)]
            elif kind == "onecycle":
                rates = [[onecycle_at(e, s, 10) for e in range(10)] for s in (spec, edited)]
            else:
                rates = [lrs(s, 0.1, 10) for s in (spec, edited)]
            assert rates[0] != rates[1], (kind, field)
    callback = schedule_callbacks(
        {"kind": "plateau", "monitor": "val_accuracy", "factor": 0.5, "patience": 2,
         "threshold": 0.01, "cooldown": 1, "min_lr": 0.001}, 0.1, 10)[0]
    assert (callback.monitor, callback.factor, callback.patience, callback.threshold,
            callback.cooldown, callback.min_lr) == ("val_accuracy", 0.5, 2, 0.01, 1, 0.001)


def test_schedule_drives_fit_and_lands_in_history():
    """LearningRateScheduler applies lr_at at each epoch start; EpochLog records it."""
    from callbacks import EpochLog

    spec = {"kind": "step", "boundaries": [1, 2]}
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    history = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0,
                        callbacks=schedule_callbacks(spec, 0.5, 3) + [EpochLog()])
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
              callbacks=schedule_callbacks(spec, 0.01, 65))
    lr, momentum = onecycle_at(0, spec, 65)
    inner = model.optimizer.inner_optimizer
    assert float(inner.momentum.numpy()) == pytest.approx(momentum)
    assert float(keras.ops.convert_to_numpy(inner.learning_rate)) == pytest.approx(lr)
    assert momentum != 0.9  # the epoch-0 value differs from the optimizer's own
    assert keras.config.dtype_policy().name == "float32"  # the policy was restored
