"""The input normalisations the five papers used.

Each kind maps uint8 images to float32. Its `stage` says whether the paper
applied it to the whole array before augmentation (paper 004's Keras scripts,
whose ImageDataGenerator then shifts the normalised images) or per batch after
augmentation (torchvision's ToTensor/Normalize, which come after the crop, so
the crop's zero padding is black before normalisation).
"""

import dataclasses
from typing import ClassVar

import numpy as np

from foundation.spec import Spec, parse

# Per-channel constants, (mean, std) on the [0, 1] scale.
CHANNEL_STATS = {
    # kuangliu/pytorch-cifar main.py; papers 000 and 003.
    "kuangliu": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # ResNet5M ResNetTrain.py; paper 001, row 6 recipe.
    "resnet5m": (
        (0.4913996458, 0.4821584523, 0.4465309381),
        (0.2470322549, 0.2434851378, 0.2615878880),
    ),
    # Normalize(0.5, 0.5): paper 001 row 1 notebook and paper 002.
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

KINDS = ("scale", "channel", "per_image", "per_pixel", "per_pixel_mean")
DEFAULT_STAGE = {
    "scale": "after",
    "channel": "after",
    "per_image": "before",
    "per_pixel": "before",
    "per_pixel_mean": "after",
}


class Normalizer:
    """Maps uint8 (or already float, 0-255) images to the network's input.

    kind:
      scale          x / 255
      channel        (x / 255 - mean) / std with one of CHANNEL_STATS
      per_image      each image minus its mean, over its std (H, W and C),
                     as tf.image.per_image_standardization
      per_pixel      per pixel position: (x / 255 - mean) / std over the
                     training set; `scale_bug=True` reproduces paper 004's
                     norm study, whose statistics came from the /255 array
                     but were applied to raw 0-255 values
      per_pixel_mean x / 255 minus the per-pixel training mean (He et al.)
    """

    def __init__(self, kind="scale", stats=None, stage=None, scale_bug=False):
        if kind not in KINDS:
            raise ValueError(f"Unknown normalization kind {kind!r}; expected one of {KINDS}.")
        if kind == "channel" and stats not in CHANNEL_STATS:
            raise ValueError(
                f"normalization 'channel' needs stats in {sorted(CHANNEL_STATS)}; got {stats!r}."
            )
        if stats is not None and kind != "channel":
            raise ValueError(f"normalization stats are read only by kind 'channel'; got stats "
                             f"{stats!r} with kind {kind!r}.")
        if not isinstance(scale_bug, bool) or (scale_bug and kind != "per_pixel"):
            raise ValueError(f"normalization scale_bug is true or false, and true only with kind "
                             f"'per_pixel'; got {scale_bug!r} with kind {kind!r}.")
        stage = stage or DEFAULT_STAGE[kind]
        if stage not in ("before", "after"):
            raise ValueError(f"normalization stage must be 'before' or 'after'; got {stage!r}.")
        self.kind, self.stats, self.stage, self.scale_bug = kind, stats, stage, scale_bug
        self.mean = self.std = None
        if kind == "channel":
            mean, std = CHANNEL_STATS[stats]
            self.mean = np.asarray(mean, np.float32) * 255.0
            self.std = np.asarray(std, np.float32) * 255.0

    def fit(self, x_train):
        """Computes training-set statistics where the kind needs them."""
        if self.kind in ("per_pixel", "per_pixel_mean"):
            scaled = x_train.astype(np.float32) / 255.0
            self.mean = scaled.mean(axis=0)
            self.std = scaled.std(axis=0)
        return self

    def __call__(self, x):
        # One float32 copy, then in-place arithmetic: this runs on every batch.
        x = np.array(x, dtype=np.float32)
        if self.kind == "scale":
            x *= np.float32(1.0 / 255.0)
            return x
        if self.kind == "channel":
            x -= self.mean
            x /= self.std
            return x
        if self.kind == "per_image":
            axes = tuple(range(1, x.ndim))
            mean = x.mean(axis=axes, keepdims=True)
            floor = np.float32(1.0 / np.sqrt(np.prod(x.shape[1:])))
            std = np.maximum(x.std(axis=axes, keepdims=True), floor)
            return (x - mean) / std
        if self.mean is None:
            raise ValueError(f"normalization {self.kind!r} must be fitted on the training set first.")
        if self.kind == "per_pixel_mean":
            return x * np.float32(1.0 / 255.0) - self.mean
        # per_pixel
        if self.scale_bug:
            return (x - self.mean) / (self.std + np.float32(1e-7))
        return (x * np.float32(1.0 / 255.0) - self.mean) / (self.std + np.float32(1e-7))

    def pad_value(self):
        """The normalised value of a black pixel (torchvision pads before Normalize)."""
        return self(np.zeros((1, 1, 1, 3), np.float32))[0, 0, 0]


# ---------------------------------------------------------------- typed specs
# One frozen dataclass per kind (registry: foundation.spec.classes("normalization"));
# `.build()` makes the Normalizer, which checks the fields as a run would.
class Normalization(Spec):
    family = "normalization"

    def build(self):
        return Normalizer(self.kind, **{k: v for k, v in self.to_dict().items() if k != "kind"})

    def check(self):
        """Raises ValueError naming the first field a run could not use."""
        stats = getattr(self, "stats", None)
        if self.kind == "channel" and stats not in CHANNEL_STATS:
            raise ValueError(f"normalization.stats must be one of {sorted(CHANNEL_STATS)}; "
                             f"got {stats!r}.")
        self.build()  # the Normalizer's own checks, as the run will make them


@dataclasses.dataclass(frozen=True)
class Scale(Normalization):
    kind: ClassVar[str] = "scale"
    stage: str = None  # None: the kind's default (DEFAULT_STAGE)


@dataclasses.dataclass(frozen=True)
class Channel(Normalization):
    kind: ClassVar[str] = "channel"
    stats: str = None  # a key of CHANNEL_STATS
    stage: str = None


@dataclasses.dataclass(frozen=True)
class PerImage(Normalization):
    kind: ClassVar[str] = "per_image"
    stage: str = None


@dataclasses.dataclass(frozen=True)
class PerPixel(Normalization):
    kind: ClassVar[str] = "per_pixel"
    scale_bug: bool = False
    stage: str = None


@dataclasses.dataclass(frozen=True)
class PerPixelMean(Normalization):
    kind: ClassVar[str] = "per_pixel_mean"
    stage: str = None


def normalization(value):
    """`value` (a spec or its dict form) as a Normalization, checked as a run would."""
    if isinstance(value, dict):
        Normalizer(**value)  # the kind's own messages for a field it does not read
    parsed = parse("normalization", value)
    parsed.build()
    return parsed
