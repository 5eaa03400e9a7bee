"""Per-image training augmentation on NumPy batches, the same on every backend.

Each op takes a batch (B, H, W, C), uint8 or float, and a `numpy.random.Generator`,
and draws its randomness per image, as torchvision (papers 000-003) and Keras's
ImageDataGenerator (paper 004) do. `keras.layers.RandomCrop` would crop a whole
batch at one offset, which is not the papers' augmentation; and augmentation
layers inside the model turn XLA off on TensorFlow, so the suite augments in the
input pipeline instead. A recipe lists its ops as plain data:

    [{"op": "crop", "padding": 4}, {"op": "hflip", "p": 0.5}]

Ops on uint8 images follow Pillow, as torchvision does for PIL images (papers
001 and 002 augment before ToTensor). Paper 003 augments after ToTensor, on
float tensors: its list starts with {"op": "float"}, after which grayscale and
autocontrast follow torchvision's tensor formulas (on the 0-255 scale; the
normaliser divides by 255 afterwards).
"""

import inspect

import numpy as np

from data import image_ops
from data.autoaugment import apply_policy


def _gather(x, rows, cols):
    """x[b, rows[b, i], cols[b, j]] for every image b: a per-image integer warp."""
    batch = np.arange(len(x))[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]


# Each op the device path (data/device_augment.py) also runs draws its randomness in
# a draw_<op>(rng, shape, **options) of its own, which both paths call: the same keys
# then give the same crops, flips, shifts and squares on both.

def draw_crop(rng, shape, padding=4, fill=0):
    """Top and left of each image's crop out of the padded image."""
    return {"top": rng.integers(0, 2 * padding + 1, size=shape[0]),
            "left": rng.integers(0, 2 * padding + 1, size=shape[0])}


def random_crop(x, rng, padding=4, fill=0):
    """Pads each side by `padding` with `fill`, then crops back at a random offset
    drawn per image from all (2 * padding + 1) ** 2 positions (torchvision RandomCrop)."""
    count, height, width = x.shape[:3]
    drawn = draw_crop(rng, x.shape, padding)
    top, left = drawn["top"], drawn["left"]
    out = np.full_like(x, fill)
    # One slice copy per offset in use (at most 81), instead of padding the batch.
    for offset in np.unique(top * (2 * padding + 1) + left):
        dy, dx = divmod(int(offset), 2 * padding + 1)
        dy, dx = dy - padding, dx - padding  # the image moves by (-dy, -dx)
        picked = np.flatnonzero((top - padding == dy) & (left - padding == dx))
        source_rows = slice(max(dy, 0), height + min(dy, 0))
        source_cols = slice(max(dx, 0), width + min(dx, 0))
        target_rows = slice(max(-dy, 0), height + min(-dy, 0))
        target_cols = slice(max(-dx, 0), width + min(-dx, 0))
        out[picked, target_rows, target_cols] = x[picked, source_rows, source_cols]
    return out


def to_float(x, rng):
    """ToTensor's position in a torchvision chain: later ops see float32 images
    (kept on the 0-255 scale; the normaliser divides by 255)."""
    return x.astype(np.float32)


def draw_chosen(rng, shape, p=0.5):
    """Whether an op with probability p applies to each image (torch.rand(1) < p)."""
    return {"chosen": rng.random(shape[0]) < p}


def _chosen(x, rng, p):
    """The images an op with probability p applies to."""
    return np.flatnonzero(draw_chosen(rng, x.shape, p)["chosen"])


def _apply_to(x, picked, op, *args):
    if len(picked) == 0:
        return x
    out = x.copy()
    out[picked] = op(x[picked], *args)
    return out


def horizontal_flip(x, rng, p=0.5):
    """Mirrors each image left-right with probability p."""
    flip = draw_chosen(rng, x.shape, p)["chosen"]
    out = x.copy()
    out[flip] = x[flip, :, ::-1]
    return out


def vertical_flip(x, rng, p=0.5):
    """Mirrors each image top-bottom with probability p."""
    flip = draw_chosen(rng, x.shape, p)["chosen"]
    out = x.copy()
    out[flip] = x[flip, ::-1]
    return out


def draw_shift(rng, shape, fraction=0.1):
    """Each image's whole-pixel shift (row0, col0) and bilinear weights (wy, wx)."""
    count, height, width = shape[:3]
    dy = rng.uniform(-fraction, fraction, size=count) * height
    dx = rng.uniform(-fraction, fraction, size=count) * width
    fy, fx = np.floor(dy), np.floor(dx)
    return {"row0": fy.astype(np.int64), "col0": fx.astype(np.int64),
            "wy": (dy - fy).astype(np.float32), "wx": (dx - fx).astype(np.float32)}


def random_shift(x, rng, fraction=0.1):
    """ImageDataGenerator(width_shift_range=f, height_shift_range=f): a continuous
    shift of up to f * size per axis, bilinear (interpolation order 1), with
    fill_mode 'nearest' (edge pixels extend)."""
    count, height, width = x.shape[:3]
    drawn = draw_shift(rng, x.shape, fraction)
    wy = drawn["wy"][:, None, None, None]
    wx = drawn["wx"][:, None, None, None]
    r0 = drawn["row0"][:, None] + np.arange(height)[None, :]
    c0 = drawn["col0"][:, None] + np.arange(width)[None, :]
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


def draw_cutout(rng, shape, size=16, low=-8, high=16, shrink_at_edge=True):
    """Each image's square: rows [top, bottom) and columns [left, right)."""
    count = shape[0]
    top, left = rng.integers(low, high, size=count), rng.integers(low, high, size=count)
    bottom, right = top + size, left + size
    top, left = np.maximum(top, 0), np.maximum(left, 0)
    if not shrink_at_edge:
        bottom, right = top + size, left + size
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def cutout(x, rng, size=16, low=-8, high=16, shrink_at_edge=True):
    """Paper 004's Cutout: one square per image, filled with that image's mean;
    its top and left are drawn from [low, high). The notebook computes
    bottom = top + size before clipping top at 0, so a square drawn across the
    top or left edge keeps only its part inside the image (`shrink_at_edge`);
    False moves such a square inside the image, always size x size."""
    count, height, width = x.shape[:3]
    drawn = draw_cutout(rng, x.shape, size, low, high, shrink_at_edge)
    top, bottom, left, right = (drawn[key] for key in ("top", "bottom", "left", "right"))
    rows, cols = np.arange(height), np.arange(width)
    row_in = (rows[None] >= top[:, None]) & (rows[None] < bottom[:, None])
    col_in = (cols[None] >= left[:, None]) & (cols[None] < right[:, None])
    mask = (row_in[:, :, None] & col_in[:, None, :])[..., None]
    mean = x.reshape(count, -1).mean(axis=1).astype(np.float32)[:, None, None, None]
    if x.dtype == np.uint8:
        mean = np.rint(mean).astype(np.uint8)
    return np.where(mask, mean.astype(x.dtype), x)


def random_rotation(x, rng, degrees=20.0):
    """torchvision RandomRotation(degrees) on PIL images: an angle uniform in
    [-degrees, degrees] per image, about the centre, nearest, black fill."""
    angle = rng.uniform(-degrees, degrees, size=len(x))
    return image_ops.affine_nearest(x, image_ops.rotation_matrices(angle, *x.shape[1:3]))


def random_translate(x, rng, fraction=0.1):
    """torchvision RandomAffine(degrees=0, translate=(f, f)): a whole-pixel shift
    round(U(-f * size, f * size)) per axis (Python's round, half to even), black fill."""
    height, width = x.shape[1:3]
    dx = np.rint(rng.uniform(-fraction * width, fraction * width, size=len(x)))
    dy = np.rint(rng.uniform(-fraction * height, fraction * height, size=len(x)))
    return image_ops.affine_nearest(x, image_ops.translation_matrices(dx, dy))


def color_jitter(x, rng, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
    """torchvision ColorJitter on PIL images: factors drawn per image from
    [max(0, 1 - v), 1 + v] (hue from [-hue, hue]), the four adjustments applied
    in a random order per image."""
    adjustments = []
    count = len(x)
    for strength, adjust in (
        (brightness, image_ops.brightness), (contrast, image_ops.contrast),
        (saturation, image_ops.color),
    ):
        factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=count)
        adjustments.append((strength > 0, adjust, factor))
    adjustments.append((hue > 0, image_ops.adjust_hue, rng.uniform(-hue, hue, size=count)))
    order = np.argsort(rng.random((count, 4)), axis=1)
    out = x.copy()
    for position in range(4):
        for slot, (enabled, adjust, factor) in enumerate(adjustments):
            picked = np.flatnonzero(order[:, position] == slot)
            if enabled and len(picked):
                out[picked] = adjust(out[picked], factor[picked])
    return out


def _float_grayscale(x):
    """torchvision's tensor rgb_to_grayscale, 3 output channels."""
    grey = x[..., 0] * np.float32(0.2989) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114)
    return np.repeat(grey[..., None].astype(x.dtype), 3, axis=-1)


def _float_autocontrast(x, bound=255.0):
    """torchvision's tensor autocontrast: per image and channel, min -> 0, max -> bound."""
    low = x.min(axis=(1, 2), keepdims=True)
    high = x.max(axis=(1, 2), keepdims=True)
    flat = high <= low
    scale = np.where(flat, 1.0, bound / np.where(flat, 1.0, high - low))
    low = np.where(flat, 0.0, low)
    return np.clip((x - low) * scale, 0.0, bound).astype(x.dtype)


def random_grayscale(x, rng, p=0.1):
    """torchvision RandomGrayscale(p): Pillow's L conversion on uint8, the tensor
    formula on float images."""
    op = image_ops.grayscale if x.dtype == np.uint8 else _float_grayscale
    return _apply_to(x, _chosen(x, rng, p), op)


def random_autocontrast(x, rng, p=0.5):
    """torchvision RandomAutocontrast(p): ImageOps.autocontrast on uint8, the
    tensor formula on float images."""
    op = image_ops.autocontrast if x.dtype == np.uint8 else _float_autocontrast
    return _apply_to(x, _chosen(x, rng, p), op)


OPS = {
    "float": to_float,
    "crop": random_crop,
    "hflip": horizontal_flip,
    "vflip": vertical_flip,
    "shift": random_shift,
    "cutout": cutout,
    "rotate": random_rotation,
    "translate": random_translate,
    "color_jitter": color_jitter,
    "grayscale": random_grayscale,
    "autocontrast": random_autocontrast,
    "autoaugment": apply_policy,
}
UINT8_ONLY = ("rotate", "translate", "color_jitter", "autoaugment")
# What each op the device path runs draws; grayscale and autocontrast run there on
# float images only (on uint8 they follow Pillow).
DRAWS = {"float": lambda rng, shape: {}, "crop": draw_crop, "hflip": draw_chosen,
         "vflip": draw_chosen, "shift": draw_shift, "cutout": draw_cutout,
         "grayscale": draw_chosen, "autocontrast": draw_chosen}


class Augmenter:
    """Applies a recipe's list of ops, in order, to a training batch."""

    def __init__(self, spec):
        self.steps, self.ops = [], []  # ops: (name, options), as listed
        is_float = False
        for entry in spec or ():
            if not isinstance(entry, dict):
                raise ValueError(f"each augmentation op is a dict like {{'op': 'crop'}}; got {entry!r}.")
            entry = dict(entry)
            name = entry.pop("op", None)
            if name not in OPS:
                raise ValueError(
                    f"Unknown augmentation op {name!r}; expected one of {sorted(OPS)}."
                )
            parameters = list(inspect.signature(OPS[name]).parameters)[2:]
            unknown = sorted(set(entry) - set(parameters))
            if unknown:
                raise ValueError(f"op {name!r} takes {parameters}; got unknown {unknown}.")
            p = entry.get("p")
            if p is not None and not (isinstance(p, (int, float)) and 0 <= p <= 1):
                raise ValueError(f"op {name!r}: p must lie in [0, 1]; got {p!r}.")
            if is_float and name in UINT8_ONLY:
                raise ValueError(f"op {name!r} follows Pillow on uint8 images; list it before 'float'.")
            is_float = is_float or name == "float"
            self.steps.append((OPS[name], entry))
            self.ops.append((name, entry))

    def __bool__(self):
        return bool(self.steps)

    def __call__(self, x, rng):
        for op, kwargs in self.steps:
            x = op(x, rng, **kwargs)
        return x
