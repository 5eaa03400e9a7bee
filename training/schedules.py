"""Learning-rate schedules with the papers' per-epoch meaning: one class per kind.

A schedule is plain data in a recipe and config.json, e.g. {"kind": "cosine",
"t_max": 200}; `schedule(value)` makes it the kind's class. Each class owns its
fields (with their defaults and the rule each value must meet), its own checks,
its rate at an epoch (`lr_at`), what the optimizer is built with
(`optimizer_rate`) and the Keras callbacks that apply it (`callbacks`). A new
kind is one class here (and its test). This module needs no Keras (the callbacks
and the iteration schedule are imported where built), so recipes load without it.

lr is the recipe's optimizer learning rate; N the run's epochs.
"""

import dataclasses
import math
from typing import ClassVar

import numpy as np

from foundation.spec import Spec, classes, parse, rule


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value):
    return _number(value) and float(value).is_integer()


POSITIVE = (lambda v: _number(v) and v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "a number >= 0")
BOUNDARIES = (lambda v: isinstance(v, list) and all(_whole(b) and b >= 0 for b in v),
              "a list of whole numbers >= 0")
VALUES = (lambda v: isinstance(v, list) and all(_number(x) and x >= 0 for x in v),
          "a list of numbers >= 0")
EPOCHS = (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0")
MOMENTUM = (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)")


class Schedule(Spec):
    family = "schedule"
    per_epoch_rate: ClassVar[bool] = True  # lr_at gives its rate (not plateau, not iterations)

    def check(self, epochs):
        """Raises ValueError naming the first field that cannot run `epochs` epochs."""
        self.check_fields()
        self.check_more(epochs)

    def check_more(self, epochs):
        """The kind's checks across fields."""

    def lr_at(self, epoch, base_lr, epochs):
        """The rate at the start of 0-based `epoch`."""
        raise ValueError(f"{self.kind!r} is not an epoch-based schedule; expected one of "
                         f"{EPOCH_KINDS}.")

    def optimizer_rate(self, base_lr):
        """What the optimizer is built with: the base rate (a callback moves it per epoch)."""
        return float(base_lr)

    def callbacks(self, base_lr, epochs, state_dir=None):
        """The Keras callbacks that apply it; state_dir keeps counters for a resume."""
        import keras

        return [keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: self.lr_at(epoch, base_lr, epochs))]

    @classmethod
    def carried_from(cls, old_kind):
        """The fields a switch of kind (--set schedule.kind=...) keeps: the ones this
        kind reads, less the boundaries and values when one side counts optimizer
        steps and the other epochs."""
        fields = set(cls.field_names())
        if "step_iterations" in (old_kind, cls.kind):
            fields -= {"boundaries", "values"}
        return fields


class _Stepped(Schedule):
    """A rate that drops at boundaries: lr * factor**i, or the listed values."""

    def boundaries_for(self, epochs):
        return self.boundaries

    def rates(self, base_lr, epochs):
        """(boundaries, one more value than boundaries)."""
        boundaries = list(self.boundaries_for(epochs))
        values = self.values
        if values is None:
            values = [base_lr * self.factor ** i for i in range(len(boundaries) + 1)]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"schedule {self.kind!r} needs {len(boundaries) + 1} values, one more than its "
                f"boundaries {boundaries}; got {len(values)}.")
        if boundaries != sorted(boundaries):
            raise ValueError(f"schedule boundaries must increase; got {boundaries}.")
        return boundaries, [float(v) for v in values]

    def check_more(self, epochs):
        self.rates(1.0, epochs)

    def lr_at(self, epoch, base_lr, epochs):
        boundaries, values = self.rates(base_lr, epochs)
        return values[int(np.searchsorted(boundaries, epoch, side="right"))]


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    kind: ClassVar[str] = "constant"

    def lr_at(self, epoch, base_lr, epochs):
        return float(base_lr)

    def callbacks(self, base_lr, epochs, state_dir=None):
        return []


@dataclasses.dataclass(frozen=True)
class Step(_Stepped):
    """The next value at each boundary epoch: lr * factor**i, or `values`."""
    kind: ClassVar[str] = "step"
    boundaries: list = rule(*BOUNDARIES)  # epochs at which the next value starts
    factor: float = rule(*POSITIVE, default=0.1)
    values: list = rule(*VALUES, default=None)


@dataclasses.dataclass(frozen=True)
class KthStep(_Stepped):
    """Paper 004's LearningController: lr/10 once epoch-1 > N/2, lr/100 once > 3N/4
    (for N=100: epochs 0-51, 52-76, 77-99)."""
    kind: ClassVar[str] = "kth_step"
    factor: float = rule(*POSITIVE, default=0.1)
    values: list = rule(*VALUES, default=None)

    def boundaries_for(self, epochs):
        """First epochs at 0.1x and 0.01x: the smallest e with e - 1 > N/2 (3N/4)."""
        return [math.floor(epochs / 2) + 2, math.floor(3 * epochs / 4) + 2]


@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
    """torch's ExponentialLR: lr * gamma**epoch."""
    kind: ClassVar[str] = "exponential"
    gamma: float = rule(*POSITIVE)  # per epoch

    def lr_at(self, epoch, base_lr, epochs):
        return float(base_lr * self.gamma ** epoch)


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """torch's CosineAnnealingLR in closed form, stepped per epoch; periodic past
    t_max as PyTorch's closed form is, unless periodic=false."""
    kind: ClassVar[str] = "cosine"
    t_max: float = rule(POSITIVE[0], "a number of epochs > 0")
    eta_min: float = rule(*NON_NEGATIVE, default=0.0)
    periodic: bool = rule(lambda v: isinstance(v, bool), "true or false", default=True)

    def lr_at(self, epoch, base_lr, epochs):
        t = epoch if self.periodic else min(epoch, self.t_max)
        return float(self.eta_min + (base_lr - self.eta_min)
                     * (1 + math.cos(math.pi * t / self.t_max)) / 2)


@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
    """torch's OneCycleLR (cos anneal, two phases) stepped once per epoch; the
    momentum (Adam: beta_1) cycles too."""
    kind: ClassVar[str] = "onecycle"
    max_lr: float = rule(*POSITIVE)
    total: int = rule(lambda v: _whole(v) and v >= 1, "a whole number of epochs >= 1",
                      default=None)  # None: the run's epochs
    pct_start: float = rule(lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)",
                            default=0.3)
    div_factor: float = rule(*POSITIVE, default=25.0)
    final_div_factor: float = rule(*POSITIVE, default=1e4)
    base_momentum: float = rule(*MOMENTUM, default=0.85)
    max_momentum: float = rule(*MOMENTUM, default=0.95)

    def check_more(self, epochs):
        # torch's OneCycleLR refuses a step past total_steps and divides by zero
        # when the warm-up phase ends at step 0.
        total = self.total or epochs
        if total < epochs:
            raise ValueError(f"schedule.total ({total}) must cover the {epochs} epochs.")
        if self.pct_start * total == 1:
            raise ValueError(f"schedule onecycle: pct_start * total must not be 1 (the warm-up "
                             f"would end at epoch 0); got {self.pct_start} * {total}.")

    def at(self, epoch, epochs):
        """(lr, momentum) at step `epoch`."""
        total = self.total or epochs
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        low_m, high_m = self.base_momentum, self.max_momentum
        phases = [(float(self.pct_start * total) - 1, initial, self.max_lr, high_m, low_m),
                  (total - 1, self.max_lr, final, low_m, high_m)]

        def anneal(start, end, pct):
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

        start_step = 0.0
        for index, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
            if epoch <= end_step or index == len(phases) - 1:
                pct = (epoch - start_step) / (end_step - start_step)
                return anneal(lr0, lr1, pct), anneal(m0, m1, pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def lr_at(self, epoch, base_lr, epochs):
        return self.at(epoch, epochs)[0]

    def callbacks(self, base_lr, epochs, state_dir=None):
        from callbacks.schedules import OneCycleCallback

        return [OneCycleCallback(self, epochs)]


@dataclasses.dataclass(frozen=True)
class Plateau(Schedule):
    """torch's ReduceLROnPlateau on `monitor`, stepped per epoch."""
    kind: ClassVar[str] = "plateau"
    per_epoch_rate: ClassVar[bool] = False
    monitor: str = rule(lambda v: isinstance(v, str) and bool(v),
                        "a history column such as \"val_loss\"", default="val_loss")
    factor: float = rule(*POSITIVE, default=0.1)
    patience: int = rule(*EPOCHS, default=10)
    threshold: float = rule(*NON_NEGATIVE, default=1e-4)  # relative
    cooldown: int = rule(*EPOCHS, default=0)
    min_lr: float = rule(*NON_NEGATIVE, default=0.0)

    def check_more(self, epochs):
        if self.factor >= 1:
            raise ValueError(f"schedule.factor must be below 1 for plateau; got {self.factor!r}.")

    def callbacks(self, base_lr, epochs, state_dir=None):
        from callbacks.schedules import TorchReduceLROnPlateau

        return [TorchReduceLROnPlateau(self, verbose=1, state_dir=state_dir)]


@dataclasses.dataclass(frozen=True)
class StepIterations(_Stepped):
    """The next value after each boundary's optimizer steps (He et al.'s 32k/48k): a
    Keras LearningRateSchedule on the optimizer, since Keras schedules count steps."""
    kind: ClassVar[str] = "step_iterations"
    per_epoch_rate: ClassVar[bool] = False
    boundaries: list = rule(*BOUNDARIES)  # optimizer steps
    factor: float = rule(*POSITIVE, default=0.1)
    values: list = rule(*VALUES, default=None)

    def lr_at(self, epoch, base_lr, epochs):
        return Schedule.lr_at(self, epoch, base_lr, epochs)

    def optimizer_rate(self, base_lr):
        from training.optimizers import IterationSteps

        return IterationSteps(*self.rates(base_lr, None))

    def callbacks(self, base_lr, epochs, state_dir=None):
        return []


KINDS = tuple(classes("schedule"))
EPOCH_KINDS = tuple(kind for kind, cls in classes("schedule").items() if cls.per_epoch_rate)


def validate(value, epochs):
    """Raises ValueError naming the first thing in `value` (a spec or its dict form)
    that cannot run `epochs` epochs."""
    data = value.to_dict() if isinstance(value, Schedule) else dict(value)
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"Unknown schedule kind {kind!r}; expected one of {KINDS}.")
    cls = classes("schedule")[kind]
    takes = cls.field_names()
    unused = sorted(set(data) - {"kind"} - set(takes))
    if unused:
        raise ValueError(f"schedule {kind!r} does not use {unused}; it takes "
                         f"{', '.join(takes) or 'no other field'}.")
    missing = [field.name for field in dataclasses.fields(cls)
               if field.default is dataclasses.MISSING and field.name not in data]
    if missing:
        raise ValueError(f"schedule {kind!r} needs {missing}.")
    spec = cls(**{key: v for key, v in data.items() if key != "kind"})
    spec.check(epochs)
    return spec


def schedule(value, epochs=None):
    """`value` (a spec or its dict form) as a Schedule, checked for `epochs` epochs."""
    if isinstance(value, dict):
        return validate(value, epochs if epochs is not None else 1)
    parsed = parse("schedule", value)
    if epochs is not None:
        parsed.check(epochs)
    return parsed
