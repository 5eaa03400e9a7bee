"""Per-image training augmentation on NumPy batches, the same on every backend.

Each op takes a batch (B, H, W, C), uint8 or float, and a `numpy.random.Generator`,
and draws its randomness per image, as torchvision (papers 000-003) and Keras's
ImageDataGenerator (paper 004) do. `keras.layers.RandomCrop` would crop a whole
batch at one offset, which is not the papers' augmentation; and augmentation
layers inside the model turn XLA off on TensorFlow, so the suite augments in the
input pipeline instead. A recipe lists its ops as plain data:

    [{"op": "crop", "padding": 4}, {"op": "hflip", "p": 0.5}]
"""

import numpy as np


def _gather(x, rows, cols):
    """x[b, rows[b, i], cols[b, j]] for every image b: a per-image integer warp."""
    batch = np.arange(len(x))[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]


def random_crop(x, rng, padding=4, fill=0):
    """Pads each side by `padding` with `fill`, then crops back at a random offset
    drawn per image from all (2 * padding + 1) ** 2 positions (torchvision RandomCrop)."""
    count, height, width = x.shape[:3]
    padded = np.pad(
        x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
        mode="constant", constant_values=fill,
    )
    top = rng.integers(0, 2 * padding + 1, size=count)
    left = rng.integers(0, 2 * padding + 1, size=count)
    rows = top[:, None] + np.arange(height)[None, :]
    cols = left[:, None] + np.arange(width)[None, :]
    return _gather(padded, rows, cols)


def horizontal_flip(x, rng, p=0.5):
    """Mirrors each image left-right with probability p."""
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return out


def vertical_flip(x, rng, p=0.5):
    """Mirrors each image top-bottom with probability p."""
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = x[flip, ::-1]
    return out


def random_shift(x, rng, fraction=0.1):
    """ImageDataGenerator(width_shift_range=f, height_shift_range=f): a continuous
    shift of up to f * size per axis, bilinear (interpolation order 1), with
    fill_mode 'nearest' (edge pixels extend)."""
    count, height, width = x.shape[:3]
    dy = rng.uniform(-fraction, fraction, size=count) * height
    dx = rng.uniform(-fraction, fraction, size=count) * width
    fy, fx = np.floor(dy), np.floor(dx)
    wy = (dy - fy).astype(np.float32)[:, None, None, None]
    wx = (dx - fx).astype(np.float32)[:, None, None, None]
    r0 = fy.astype(np.int64)[:, None] + np.arange(height)[None, :]
    c0 = fx.astype(np.int64)[:, None] + np.arange(width)[None, :]
    r1, c1 = np.clip(r0 + 1, 0, height - 1), np.clip(c0 + 1, 0, width - 1)
    r0, c0 = np.clip(r0, 0, height - 1), np.clip(c0, 0, width - 1)
    source = x.astype(np.float32, copy=False)
    out = (
        (1 - wy) * (1 - wx) * _gather(source, r0, c0)
        + (1 - wy) * wx * _gather(source, r0, c1)
        + wy * (1 - wx) * _gather(source, r1, c0)
        + wy * wx * _gather(source, r1, c1)
    )
    if x.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(x.dtype, copy=False)


def cutout(x, rng, size=16, low=-8, high=16):
    """Paper 004's Cutout: one size x size square per image, filled with that
    image's mean; its top and left are drawn from [low, high) and clipped at 0,
    so the square may lie partly outside the image."""
    count, height, width = x.shape[:3]
    top = np.maximum(rng.integers(low, high, size=count), 0)
    left = np.maximum(rng.integers(low, high, size=count), 0)
    rows, cols = np.arange(height), np.arange(width)
    row_in = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + size)
    col_in = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + size)
    mask = (row_in[:, :, None] & col_in[:, None, :])[..., None]
    mean = x.reshape(count, -1).mean(axis=1).astype(np.float32)[:, None, None, None]
    if x.dtype == np.uint8:
        mean = np.rint(mean).astype(np.uint8)
    return np.where(mask, mean.astype(x.dtype), x)


OPS = {
    "crop": random_crop,
    "hflip": horizontal_flip,
    "vflip": vertical_flip,
    "shift": random_shift,
    "cutout": cutout,
}


class Augmenter:
    """Applies a recipe's list of ops, in order, to a training batch."""

    def __init__(self, spec):
        self.steps = []
        for entry in spec or ():
            entry = dict(entry)
            name = entry.pop("op", None)
            if name not in OPS:
                raise ValueError(
                    f"Unknown augmentation op {name!r}; expected one of {sorted(OPS)}."
                )
            self.steps.append((OPS[name], entry))

    def __bool__(self):
        return bool(self.steps)

    def __call__(self, x, rng):
        for op, kwargs in self.steps:
            x = op(x, rng, **kwargs)
        return x
