"""One registry maps a network name to its builder; `experiments/run.py --list`
and the tests read it."""

import dataclasses
import math

MODELS = {}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: object  # builder(num_classes=10, **kwargs) -> keras.Model
    paper: str


def register(name, *, paper):
    def wrap(builder):
        if name in MODELS:
            raise ValueError(f"Model {name!r} is registered twice.")
        MODELS[name] = ModelEntry(name, builder, paper)
        return builder

    return wrap


def build_model(name, num_classes=10, **kwargs):
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
    return MODELS[name].builder(num_classes=num_classes, **kwargs)


def count_params(model):
    """(trainable, non-trainable) scalars, as Keras counts them."""
    def total(weights):
        return int(sum(math.prod(w.shape) for w in weights))

    return total(model.trainable_weights), total(model.non_trainable_weights)
