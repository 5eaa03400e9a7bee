"""Typed recipe sections: a frozen dataclass per section (noise, transfer, early
stopping, mixer) or per kind of a family (schedule, optimizer, normalisation, each
in its family's registry).

A spec owns its fields and defaults (the dataclass), its checks and the objects
it builds (methods of its class); code reads its fields as attributes. Its plain
data, what config.json and --set hold, is `to_dict()`: the discriminator (`kind`,
or `name` for optimizers) and every field that is set. `parse(family, value)`
makes a spec of a dict.
"""

import dataclasses
from typing import ClassVar

REGISTRY = {}  # family -> {kind: class}


class Section:
    """A recipe section's dataclass, with its plain-data form (`to_dict`)."""
    field: ClassVar[str]  # the recipe field it fills, in messages

    @classmethod
    def field_names(cls):
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def parse(cls, value):
        """`value` as this section: None or an instance as it is, a dict by its fields
        (an empty one is None: the section off); ValueError names what does not fit."""
        if value is None or isinstance(value, cls):
            return value
        names = cls.field_names()
        if not isinstance(value, dict):
            raise ValueError(f"{cls.field} must be null or a group of keys ({', '.join(names)}); "
                             f"got {value!r}.")
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{cls.field} does not take {unknown}; it takes {', '.join(names)}.")
        return cls(**value) if value else None

    def to_dict(self):
        """Every field whose value is set (None reads as absent)."""
        values = {name: getattr(self, name) for name in self.field_names()}
        return {k: v for k, v in values.items() if v is not None}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def rule(check, meaning, default=dataclasses.MISSING):
    """A field whose value must pass `check`; `Spec.check_fields` refuses another with
    "<family>.<field> must be <meaning>; got <value>"."""
    return dataclasses.field(default=default, metadata={"check": check, "meaning": meaning})


class Spec(Section):
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
    if value is None or isinstance(value, Section):
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
    if isinstance(value, Section):
        return {k: to_data(v) for k, v in value.to_dict().items()}
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    return value
