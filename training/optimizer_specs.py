"""The optimizer a recipe names, as typed specs (registry: common.spec.classes
("optimizer")); `.build()` makes the Keras optimizer (training/optimizers.py).

style "torch": torch.optim's rules and defaults, `weight_decay` coupled (added to
every gradient); "keras": Keras's optimizers as paper 004 used them (its
regularisation lives in the layers). `clipvalue` clips each gradient by value.
"""

import dataclasses
from typing import ClassVar

from common.spec import Spec, parse

OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
STYLES = ("torch", "keras")
# The momentum fields each optimizer reads (RMSprop's is its own; Adam and Adagrad have none).
MOMENTUM_FIELDS = {"sgd": ("momentum", "nesterov"), "adam": (), "adagrad": (),
                   "rmsprop": ("momentum",)}


class Optimizer(Spec):
    family = "optimizer"
    key = "name"

    def build(self, learning_rate=None):
        """The Keras optimizer; `learning_rate` (a float or a Keras schedule) replaces
        the spec's rate where given."""
        from training.optimizers import build_optimizer

        options = {k: v for k, v in self.to_dict().items() if k not in ("name", "learning_rate")}
        return build_optimizer(self.kind, learning_rate=self.learning_rate if learning_rate is None
                               else learning_rate, **options)


@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    kind: ClassVar[str] = "sgd"
    learning_rate: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    style: str = "torch"
    clipvalue: float = None


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    kind: ClassVar[str] = "adam"
    learning_rate: float
    weight_decay: float = 0.0
    style: str = "torch"
    clipvalue: float = None


@dataclasses.dataclass(frozen=True)
class Adagrad(Optimizer):
    kind: ClassVar[str] = "adagrad"
    learning_rate: float
    weight_decay: float = 0.0
    style: str = "torch"
    clipvalue: float = None


@dataclasses.dataclass(frozen=True)
class RMSprop(Optimizer):
    kind: ClassVar[str] = "rmsprop"
    learning_rate: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    style: str = "torch"
    clipvalue: float = None


def optimizer(value):
    """`value` (a spec or its dict form) as an Optimizer spec."""
    return parse("optimizer", value)
