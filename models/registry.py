"""One registry maps a network name to its builder; `experiments/run.py --list`
and the tests read it."""

import dataclasses
import inspect
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


def check_numbers(label, values, *, minimum=None, below=None, whole=False, choices=None):
    """Raises ValueError naming `label` unless each of `values` (one number or a list)
    is a number in range: a builder's loops would otherwise take a count of -1 as 0."""
    items = values if isinstance(values, (list, tuple)) else [values]
    for item in items:
        fine = isinstance(item, (int, float)) and not isinstance(item, bool)
        fine = fine and (not whole or float(item).is_integer())
        fine = fine and (minimum is None or item >= minimum) and (below is None or item < below)
        fine = fine and (choices is None or item in choices)
        if not fine:
            wanted = (f"one of {choices}" if choices else
                      ("a whole number" if whole else "a number")
                      + (f" >= {minimum}" if minimum is not None else "")
                      + (f" below {below}" if below is not None else ""))
            raise ValueError(f"{label} must be {wanted}" + (" each" if items is values else "")
                             + f"; got {values!r}.")


def check_args(name, args):
    """Raises ValueError for an argument `name`'s builder does not take, so that a
    mistyped model_args key fails before any data is loaded. (Values are the
    builder's to check, when it builds.)"""
    builder = MODELS[name].builder
    parameters = dict(inspect.signature(builder).parameters)
    forwards_to = getattr(builder, "forwards_to", None)  # **overrides passed on to it
    if forwards_to:
        parameters.update(inspect.signature(forwards_to).parameters)
    takes = sorted(p for p, spec in parameters.items()
                   if p not in ("num_classes", "name") and not p.startswith("_")
                   and spec.kind is not inspect.Parameter.VAR_KEYWORD)
    unknown = sorted(set(args) - set(takes))
    if unknown:
        raise ValueError(f"model_args: {name} does not take {unknown}; it takes "
                         f"{', '.join(takes) or 'no arguments'}.")


def build_model(name, num_classes=10, **kwargs):
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}.")
    return MODELS[name].builder(num_classes=num_classes, **kwargs)


def count_params(model):
    """(trainable, non-trainable) scalars, as Keras counts them."""
    def total(weights):
        return int(sum(math.prod(w.shape) for w in weights))

    return total(model.trainable_weights), total(model.non_trainable_weights)
