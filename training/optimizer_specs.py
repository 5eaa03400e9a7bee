"""The optimizer a recipe names, as typed specs (registry: foundation.spec.classes
("optimizer")); `.build()` makes the Keras optimizer (training/optimizers.py).

style "torch": torch.optim's rules and defaults, `weight_decay` coupled (added to
every gradient); "keras": Keras's optimizers as paper 004 used them (its
regularisation lives in the layers). `clipvalue` clips each gradient by value.
"""

import dataclasses
import json
from typing import ClassVar

from foundation.spec import Spec, classes, parse, rule

STYLES = ("torch", "keras")


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


LEARNING_RATE = (lambda v: _number(v) and v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
MOMENTUM = (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0")
NESTEROV = (lambda v: isinstance(v, bool), "true or false")
STYLE = (lambda v: v in STYLES, f"one of {STYLES}")
CLIP = (lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0 or null")


class Optimizer(Spec):
    family = "optimizer"
    key = "name"

    def check(self):
        """Raises ValueError naming the first field the optimizer cannot run with."""
        self.check_fields()
        momentum = getattr(self, "momentum", 0.0)
        if not 0 <= momentum < 1:
            raise ValueError(f"optimizer.momentum must lie in [0, 1); got {momentum!r}.")
        if self.style == "keras" and self.weight_decay:
            raise ValueError("Keras-style recipes regularise through per-layer L2; set "
                             "optimizer.weight_decay to 0 or use optimizer.style=torch.")

    def build(self, learning_rate=None):
        """The Keras optimizer; `learning_rate` (a float or a Keras schedule) replaces
        the spec's rate where given."""
        from training.optimizers import build_optimizer

        self.check()
        options = {k: v for k, v in self.to_dict().items() if k not in ("name", "learning_rate")}
        return build_optimizer(self.kind, learning_rate=self.learning_rate if learning_rate is None
                               else learning_rate, **options)


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    kind: ClassVar[str] = "sgd"
    learning_rate: float = rule(*LEARNING_RATE)
    momentum: float = rule(*MOMENTUM, default=0.0)
    nesterov: bool = rule(*NESTEROV, default=False)
    weight_decay: float = rule(*NON_NEGATIVE, default=0.0)
    style: str = rule(*STYLE, default="torch")
    clipvalue: float = rule(*CLIP, default=None)


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    kind: ClassVar[str] = "adam"
    learning_rate: float = rule(*LEARNING_RATE)
    weight_decay: float = rule(*NON_NEGATIVE, default=0.0)
    style: str = rule(*STYLE, default="torch")
    clipvalue: float = rule(*CLIP, default=None)


@dataclasses.dataclass(frozen=True)
class Adagrad(Optimizer):
    kind: ClassVar[str] = "adagrad"
    learning_rate: float = rule(*LEARNING_RATE)
    weight_decay: float = rule(*NON_NEGATIVE, default=0.0)
    style: str = rule(*STYLE, default="torch")
    clipvalue: float = rule(*CLIP, default=None)


@dataclasses.dataclass(frozen=True)
class RMSprop(Optimizer):
    """RMSprop's momentum is its own (torch's), not SGD's."""
    kind: ClassVar[str] = "rmsprop"
    learning_rate: float = rule(*LEARNING_RATE)
    momentum: float = rule(*MOMENTUM, default=0.0)
    weight_decay: float = rule(*NON_NEGATIVE, default=0.0)
    style: str = rule(*STYLE, default="torch")
    clipvalue: float = rule(*CLIP, default=None)


OPTIMIZERS = tuple(classes("optimizer"))
# The momentum fields each optimizer reads: the ones its class declares.
MOMENTUM_FIELDS = {name: tuple(f for f in ("momentum", "nesterov") if f in cls.field_names())
                   for name, cls in classes("optimizer").items()}


def optimizer(value):
    """`value` (a spec or its dict form) as an Optimizer spec. The dict form needs a
    known name and style, and a momentum or nesterov the optimizer does not read is
    refused unless it is off (0 or false), when it is dropped."""
    if not isinstance(value, dict):
        return parse("optimizer", value)
    name = value.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}; got {name!r}.")
    if value.get("style", "torch") not in STYLES:
        raise ValueError(f"optimizer.style must be one of {STYLES}; got {value.get('style')!r}.")
    fields = dict(value)
    for key, off in (("momentum", "0"), ("nesterov", "false")):
        if key in fields and key not in MOMENTUM_FIELDS[name]:
            if fields[key]:
                readers = [n for n, read in MOMENTUM_FIELDS.items() if key in read]
                raise ValueError(
                    f"optimizer.{key}={json.dumps(fields[key])} is not read by {name}; set it to "
                    f"{off} or use an optimizer that reads it ({', '.join(readers)}).")
            del fields[key]
    return parse("optimizer", fields)
