"""Typed recipe sections: one frozen dataclass per kind of schedule, optimizer,
normalisation and mixer, each in its family's registry.

A spec owns its fields and defaults (the dataclass), its checks and the objects
it builds (methods of its class). It also reads as the plain data it stands for
(`spec["kind"]`, `spec.get("t_max")`, `{**spec}`), which is what config.json
holds: `to_dict()` is the discriminator (`kind`, or `name` for optimizers) and
every field that is set. `parse(family, value)` makes a spec of a dict.
"""

import dataclasses
from typing import ClassVar

REGISTRY = {}  # family -> {kind: class}


class DataView:
    """A dataclass that also reads as its dict form (`to_dict`), read-only."""

    @classmethod
    def field_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    def to_dict(self):
        """Every field whose value is set (None reads as absent)."""
        values = {name: getattr(self, name) for name in self.field_names()}
        return {k: v for k, v in values.items() if v is not None}

    def __getitem__(self, name):
        return self.to_dict()[name]

    def get(self, name, default=None):
        return self.to_dict().get(name, default)

    def keys(self):
        return self.to_dict().keys()

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())

    def __contains__(self, name):
        return name in self.to_dict()

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def rule(check, meaning, default=dataclasses.MISSING):
    """A field whose value must pass `check`; `Spec.check_fields` refuses another with
    "<family>.<field> must be <meaning>; got <value>"."""
    return dataclasses.field(default=default, metadata={"check": check, "meaning": meaning})


class Spec(DataView):
    """A kind of a family: its class is found by the discriminator's value."""
    family: ClassVar[str]  # "schedule", "optimizer", "normalization"
    key: ClassVar[str] = "kind"  # the discriminator's name in the dict form
    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("kind"), str):
            REGISTRY.setdefault(cls.family, {})[cls.kind] = cls

    def to_dict(self):
        """The discriminator and every field whose value is set."""
        return {self.key: self.kind, **super().to_dict()}

    def check_fields(self):
        """Raises ValueError naming the first set field that breaks its rule."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if "check" in field.metadata and value is not None and not field.metadata["check"](value):
                raise ValueError(f"{self.family}.{field.name} must be "
                                 f"{field.metadata['meaning']}; got {value!r}.")


def classes(family):
    return REGISTRY.get(family, {})


def parse(family, value):
    """`value` as a spec of `family`: a spec as it is, a dict by its discriminator
    (fields the class does not declare raise ValueError naming them), None as None."""
    if value is None or isinstance(value, DataView):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{family} must be a group of keys; got {value!r}.")
    known = classes(family)
    key = next(iter(known.values())).key if known else "kind"
    kind = value.get(key)
    if kind not in known:
        raise ValueError(f"{family}.{key} must be one of {', '.join(known)}; got {kind!r}.")
    cls = known[kind]
    fields = {k: v for k, v in value.items() if k != key}
    unknown = sorted(set(fields) - set(cls.field_names()))
    if unknown:
        raise ValueError(f"{family} {kind!r} does not take {unknown}; it takes "
                         f"{', '.join(cls.field_names()) or 'no other field'}.")
    return cls(**fields)


def to_data(value):
    """A recipe value as plain data: specs as their dicts, lists and dicts deeply."""
    if isinstance(value, DataView):
        return {k: to_data(v) for k, v in value.to_dict().items()}
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    return value
