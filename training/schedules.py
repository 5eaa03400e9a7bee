"""Learning-rate schedules with the papers' per-epoch meaning.

A schedule is plain data, e.g. {"kind": "cosine", "t_max": 200}. Epoch-based
kinds are pure functions of the 0-based epoch (`lr_at`), applied at the start of
each epoch by the callbacks in callbacks/schedules.py (one-cycle, which also
cycles the momentum, by `OneCycle`). The iteration-based kind
("step_iterations", He et al.'s 32k/48k) becomes a Keras LearningRateSchedule on
the optimizer (training.optimizers.IterationSteps), since Keras schedules count
optimizer steps. "plateau" is torch's ReduceLROnPlateau as a callback. This
module needs no Keras, so recipes load without it.

kinds and their fields (lr = the recipe's optimizer learning rate; `validate`
refuses a field its kind does not read, and a value outside RULES):
  constant         -
  step             boundaries: epochs at which the next value starts; factor
                   (default 0.1) or values
  kth_step         paper 004's LearningController: lr/10 once epoch-1 > N/2 and
                   lr/100 once epoch-1 > 3N/4 (N = epochs); i.e. for N=100,
                   epochs 0-51, 52-76, 77-99; factor or values as for step
  exponential      gamma per epoch (torch ExponentialLR)
  cosine           t_max (epochs), eta_min; periodic past t_max as PyTorch's
                   closed form is, unless periodic=false
  onecycle         max_lr, total (epochs, default N), pct_start 0.3, div_factor
                   25, final_div_factor 1e4, base/max momentum 0.85/0.95
                   (torch OneCycleLR stepped once per epoch)
  plateau          monitor, factor, patience, threshold (relative), cooldown,
                   min_lr
  step_iterations  boundaries: optimizer steps; factor or values
"""

import dataclasses
import math
from typing import ClassVar

import numpy as np

from common.spec import Spec, parse

KINDS = ("constant", "step", "kth_step", "exponential", "cosine", "onecycle", "plateau",
         "step_iterations")
EPOCH_KINDS = ("constant", "step", "kth_step", "exponential", "cosine", "onecycle")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value):
    return _number(value) and float(value).is_integer()


# What each field must hold. A kind reads only the fields FIELDS gives it; any other
# field is refused, since a value nobody reads would look like a change that ran.
RULES = {
    "boundaries": (lambda v: isinstance(v, list) and all(_whole(b) and b >= 0 for b in v),
                   "a list of whole numbers >= 0"),
    "values": (lambda v: isinstance(v, list) and all(_number(x) and x >= 0 for x in v),
               "a list of numbers >= 0"),
    "factor": (lambda v: _number(v) and v > 0, "a number > 0"),
    "gamma": (lambda v: _number(v) and v > 0, "a number > 0"),
    "t_max": (lambda v: _number(v) and v > 0, "a number of epochs > 0"),
    "eta_min": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "periodic": (lambda v: isinstance(v, bool), "true or false"),
    "max_lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "total": (lambda v: _whole(v) and v >= 1, "a whole number of epochs >= 1"),
    "pct_start": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "div_factor": (lambda v: _number(v) and v > 0, "a number > 0"),
    "final_div_factor": (lambda v: _number(v) and v > 0, "a number > 0"),
    "base_momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "max_momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "monitor": (lambda v: isinstance(v, str) and bool(v), "a history column such as \"val_loss\""),
    "patience": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "threshold": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "cooldown": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0"),
    "min_lr": (lambda v: _number(v) and v >= 0, "a number >= 0"),
}
FIELDS = {
    "constant": (),
    "step": ("boundaries", "factor", "values"),
    "kth_step": ("factor", "values"),
    "exponential": ("gamma",),
    "cosine": ("t_max", "eta_min", "periodic"),
    "onecycle": ("max_lr", "total", "pct_start", "div_factor", "final_div_factor",
                 "base_momentum", "max_momentum"),
    "plateau": ("monitor", "factor", "patience", "threshold", "cooldown", "min_lr"),
    "step_iterations": ("boundaries", "factor", "values"),
}


def step_values(spec, lr):
    boundaries = list(spec["boundaries"])
    values = spec.get("values")
    if values is None:
        factor = spec.get("factor", 0.1)
        values = [lr * factor ** i for i in range(len(boundaries) + 1)]
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"schedule {spec['kind']!r} needs {len(boundaries) + 1} values, one more than its "
            f"boundaries {boundaries}; got {len(values)}."
        )
    if boundaries != sorted(boundaries):
        raise ValueError(f"schedule boundaries must increase; got {boundaries}.")
    return boundaries, [float(v) for v in values]


def kth_step_boundaries(epochs):
    """First epochs at 0.1x and 0.01x: the smallest e with e - 1 > N/2 (3N/4)."""
    return [math.floor(epochs / 2) + 2, math.floor(3 * epochs / 4) + 2]


def onecycle_at(epoch, spec, epochs):
    """torch.optim.lr_scheduler.OneCycleLR (cos anneal, two phases) at step `epoch`:
    returns (lr, momentum)."""
    total = spec.get("total", epochs)
    max_lr = spec["max_lr"]
    initial = max_lr / spec.get("div_factor", 25.0)
    final = initial / spec.get("final_div_factor", 1e4)
    low_m, high_m = spec.get("base_momentum", 0.85), spec.get("max_momentum", 0.95)
    phases = [
        (float(spec.get("pct_start", 0.3) * total) - 1, initial, max_lr, high_m, low_m),
        (total - 1, max_lr, final, low_m, high_m),
    ]

    def anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    start_step = 0.0
    for index, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
        if epoch <= end_step or index == len(phases) - 1:
            pct = (epoch - start_step) / (end_step - start_step)
            return anneal(lr0, lr1, pct), anneal(m0, m1, pct)
        start_step = end_step
    raise AssertionError("unreachable")


def lr_at(epoch, spec, base_lr, epochs):
    """The learning rate of 0-based `epoch` under an epoch-based schedule."""
    kind = spec["kind"]
    if kind == "constant":
        return float(base_lr)
    if kind in ("step", "kth_step"):
        if kind == "kth_step":
            spec = {**spec, "boundaries": kth_step_boundaries(epochs)}
        boundaries, values = step_values(spec, base_lr)
        return values[int(np.searchsorted(boundaries, epoch, side="right"))]
    if kind == "exponential":
        return float(base_lr * spec["gamma"] ** epoch)
    if kind == "cosine":
        t_max, eta_min = spec["t_max"], spec.get("eta_min", 0.0)
        t = epoch if spec.get("periodic", True) else min(epoch, t_max)
        return float(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2)
    if kind == "onecycle":
        return onecycle_at(epoch, spec, epochs)[0]
    raise ValueError(f"{kind!r} is not an epoch-based schedule; expected one of {EPOCH_KINDS}.")


def carried_fields(old_kind, new_kind):
    """What a switch of kind keeps: the fields the new kind reads, except boundaries
    (and their values) between step_iterations, which counts optimizer steps, and a
    kind that counts epochs."""
    fields = set(FIELDS.get(new_kind, ()))
    if "step_iterations" in (old_kind, new_kind):
        fields -= {"boundaries", "values"}
    return fields


def validate(spec, epochs):
    """Raises ValueError naming the first field of `spec` that cannot run."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"Unknown schedule kind {kind!r}; expected one of {KINDS}.")
    unused = sorted(set(spec) - {"kind"} - set(FIELDS[kind]))
    if unused:
        takes = ", ".join(FIELDS[kind]) or "no other field"
        raise ValueError(f"schedule {kind!r} does not use {unused}; it takes {takes}.")
    required = {"step": ["boundaries"], "exponential": ["gamma"], "cosine": ["t_max"],
                "onecycle": ["max_lr"], "step_iterations": ["boundaries"]}.get(kind, [])
    missing = [key for key in required if key not in spec]
    if missing:
        raise ValueError(f"schedule {kind!r} needs {missing}.")
    for field in FIELDS[kind]:
        check, meaning = RULES[field]
        if field in spec and not check(spec[field]):
            raise ValueError(f"schedule.{field} must be {meaning}; got {spec[field]!r}.")
    if kind == "plateau" and spec.get("factor", 0.1) >= 1:
        raise ValueError(f"schedule.factor must be below 1 for plateau; got {spec['factor']!r}.")
    if kind == "onecycle":
        # torch's OneCycleLR refuses a step past total_steps and divides by zero
        # when the warm-up phase ends at step 0.
        total = spec.get("total", epochs)
        if total < epochs:
            raise ValueError(f"schedule.total ({total}) must cover the {epochs} epochs.")
        if spec.get("pct_start", 0.3) * total == 1:
            raise ValueError(f"schedule onecycle: pct_start * total must not be 1 (the warm-up "
                             f"would end at epoch 0); got {spec.get('pct_start', 0.3)} * {total}.")
    if kind in ("step", "step_iterations"):
        step_values(spec, 1.0)
    if kind == "kth_step":
        step_values({**spec, "boundaries": kth_step_boundaries(epochs)}, 1.0)


# ---------------------------------------------------------------- typed specs
# One frozen dataclass per kind (registry: common.spec.classes("schedule")); the
# functions above are their arithmetic, on the dict form that config.json holds.
class Schedule(Spec):
    family = "schedule"

    def check(self, epochs):
        """Raises ValueError naming the first field that cannot run `epochs` epochs."""
        validate(self.to_dict(), epochs)

    def lr_at(self, epoch, base_lr, epochs):
        """The rate at the start of 0-based `epoch` (epoch-based kinds)."""
        return lr_at(epoch, self.to_dict(), base_lr, epochs)

    def callbacks(self, base_lr, epochs, state_dir=None):
        """The Keras callbacks that apply it (callbacks/schedules.py)."""
        from callbacks.schedules import schedule_callbacks

        return schedule_callbacks(self.to_dict(), base_lr, epochs, state_dir)

    @classmethod
    def carried_from(cls, old_kind):
        """The fields a switch from `old_kind` to this kind keeps (see carried_fields)."""
        return carried_fields(old_kind, cls.kind)


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    kind: ClassVar[str] = "constant"


@dataclasses.dataclass(frozen=True)
class Step(Schedule):
    """The next value at each boundary epoch: lr * factor**i, or `values`."""
    kind: ClassVar[str] = "step"
    boundaries: list
    factor: float = 0.1
    values: list = None


@dataclasses.dataclass(frozen=True)
class KthStep(Schedule):
    """Paper 004's LearningController: lr/10 once epoch-1 > N/2, lr/100 once > 3N/4."""
    kind: ClassVar[str] = "kth_step"
    factor: float = 0.1
    values: list = None


@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
    kind: ClassVar[str] = "exponential"
    gamma: float  # per epoch


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """torch's CosineAnnealingLR stepped per epoch; periodic past t_max unless not."""
    kind: ClassVar[str] = "cosine"
    t_max: float  # epochs
    eta_min: float = 0.0
    periodic: bool = True


@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
    """torch's OneCycleLR stepped per epoch, momentum cycled too."""
    kind: ClassVar[str] = "onecycle"
    max_lr: float
    total: int = None  # epochs; None: the run's
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95


@dataclasses.dataclass(frozen=True)
class Plateau(Schedule):
    """torch's ReduceLROnPlateau on `monitor`, stepped per epoch."""
    kind: ClassVar[str] = "plateau"
    monitor: str = "val_loss"
    factor: float = 0.1
    patience: int = 10  # epochs
    threshold: float = 1e-4  # relative
    cooldown: int = 0  # epochs
    min_lr: float = 0.0


@dataclasses.dataclass(frozen=True)
class StepIterations(Schedule):
    """The next value after each boundary's optimizer steps (He et al.'s 32k/48k)."""
    kind: ClassVar[str] = "step_iterations"
    boundaries: list
    factor: float = 0.1
    values: list = None


def schedule(value, epochs=None):
    """`value` (a spec or its dict form) as a Schedule, checked for `epochs` epochs."""
    if isinstance(value, dict):
        validate(value, epochs if epochs is not None else 1)
    parsed = parse("schedule", value)
    if epochs is not None:
        parsed.check(epochs)
    return parsed
