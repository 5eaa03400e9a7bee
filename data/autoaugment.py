"""AutoAugment's CIFAR-10 policy as torchvision applies it to PIL images (paper 001).

Per image: one of the 25 sub-policies, uniformly; each of its two ops applied
with its probability; signed ops negated with probability 1/2. Magnitudes are
torchvision's 10 bins for a 32x32 image; geometry is nearest-neighbour with a
black fill. Keras's RandAugment is a different algorithm, so the policy is
written out here, on the Pillow-exact ops of `data.image_ops`.
"""

import numpy as np

from data import image_ops

BINS = 10
_SIZE = 32
# (magnitudes by bin, signed), as torchvision's _augmentation_space(10, (32, 32)).
MAGNITUDES = {
    "ShearX": (np.linspace(0.0, 0.3, BINS), True),
    "ShearY": (np.linspace(0.0, 0.3, BINS), True),
    "TranslateX": (np.linspace(0.0, 150.0 / 331.0 * _SIZE, BINS), True),
    "TranslateY": (np.linspace(0.0, 150.0 / 331.0 * _SIZE, BINS), True),
    "Rotate": (np.linspace(0.0, 30.0, BINS), True),
    "Brightness": (np.linspace(0.0, 0.9, BINS), True),
    "Color": (np.linspace(0.0, 0.9, BINS), True),
    "Contrast": (np.linspace(0.0, 0.9, BINS), True),
    "Sharpness": (np.linspace(0.0, 0.9, BINS), True),
    "Posterize": (8 - np.round(np.arange(BINS) / ((BINS - 1) / 4)), False),
    "Solarize": (np.linspace(255.0, 0.0, BINS), False),
    "AutoContrast": (np.zeros(BINS), False),
    "Equalize": (np.zeros(BINS), False),
    "Invert": (np.zeros(BINS), False),
}
# torchvision stores the bins as float32 tensors; keep their values.
MAGNITUDES = {name: (bins.astype(np.float32).astype(np.float64), signed)
              for name, (bins, signed) in MAGNITUDES.items()}

# The 25 sub-policies: ((op, probability, bin), (op, probability, bin)).
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


def _affine(matrices):
    return lambda x, m: image_ops.affine_nearest(x, matrices(x, m))


# Each op: (uint8 images, per-image magnitudes) -> images, as torchvision's _apply_op.
APPLY = {
    "ShearX": _affine(lambda x, m: image_ops.shear_matrices(m, "x")),
    "ShearY": _affine(lambda x, m: image_ops.shear_matrices(m, "y")),
    "TranslateX": _affine(lambda x, m: image_ops.translation_matrices(np.trunc(m), 0 * m)),
    "TranslateY": _affine(lambda x, m: image_ops.translation_matrices(0 * m, np.trunc(m))),
    "Rotate": _affine(lambda x, m: image_ops.rotation_matrices(m, *x.shape[1:3])),
    "Brightness": lambda x, m: image_ops.brightness(x, 1.0 + m),
    "Color": lambda x, m: image_ops.color(x, 1.0 + m),
    "Contrast": lambda x, m: image_ops.contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: image_ops.sharpness(x, 1.0 + m),
    "Posterize": lambda x, m: image_ops.posterize(x, m.astype(np.int64)),
    "Solarize": lambda x, m: image_ops.solarize(x, m),
    "AutoContrast": lambda x, m: image_ops.autocontrast(x),
    "Equalize": lambda x, m: image_ops.equalize(x),
    "Invert": lambda x, m: image_ops.invert(x),
}

# The policy as arrays: op index, probability and magnitude per (sub-policy, slot).
_OP_NAMES = tuple(APPLY)
_OP_INDEX = np.array([[_OP_NAMES.index(op) for op, _, _ in sub] for sub in CIFAR10_POLICY])
_PROBABILITY = np.array([[p for _, p, _ in sub] for sub in CIFAR10_POLICY])
_MAGNITUDE = np.array([[MAGNITUDES[op][0][b] if b is not None else 0.0 for op, _, b in sub]
                       for sub in CIFAR10_POLICY])
_SIGNED = np.array([[MAGNITUDES[op][1] for op, _, _ in sub] for sub in CIFAR10_POLICY])


def draw(count, rng):
    """Per image: the sub-policy index, and per slot whether the op runs and its
    signed magnitude (torchvision: probs[i] <= p; negated when signs[i] == 0)."""
    policy = rng.integers(0, len(CIFAR10_POLICY), size=count)
    runs = rng.random((count, 2)) <= _PROBABILITY[policy]
    negate = (rng.integers(0, 2, size=(count, 2)) == 0) & _SIGNED[policy]
    magnitude = np.where(negate, -_MAGNITUDE[policy], _MAGNITUDE[policy])
    return policy, runs, magnitude


def apply_policy(x, rng):
    """AutoAugment(CIFAR10) on a uint8 batch; each op runs once per slot on all
    the images that drew it."""
    if x.dtype != np.uint8:
        raise ValueError(f"autoaugment takes uint8 images; got {x.dtype}.")
    policy, runs, magnitude = draw(len(x), rng)
    out = x.copy()
    for slot in (0, 1):
        op_index = _OP_INDEX[policy, slot]
        for index in np.unique(op_index[runs[:, slot]]):
            picked = np.flatnonzero(runs[:, slot] & (op_index == index))
            out[picked] = APPLY[_OP_NAMES[index]](out[picked], magnitude[picked, slot])
    return out
