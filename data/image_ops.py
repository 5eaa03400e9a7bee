"""Pillow's image operations, vectorised over a uint8 batch (B, H, W, 3).

torchvision applies ColorJitter, RandomRotation, RandomAffine and AutoAugment to
PIL images when they come before ToTensor, as in papers 001 and 002, so Pillow
defines what those augmentations compute: its rounding, its blends, its
histogram ops and its nearest-neighbour affine sampler. Each function below takes
one parameter per image and reproduces Pillow to within one grey level (the
tests compare them with Pillow image by image).

Keras has AutoContrast, Equalization and Solarization layers, but they work on
backend tensors with one magnitude per batch and their own rounding; the input
pipeline is NumPy per image, so the Pillow semantics are written out here.
"""

import numpy as np
from PIL import Image


def _per_image(values, count, dtype=np.float32):
    """A per-image parameter as a (B, 1, 1, 1) array (a scalar is broadcast)."""
    values = np.broadcast_to(np.asarray(values, dtype=dtype), (count,))
    return values.reshape(count, 1, 1, 1)


def _require_uint8(x, name):
    if x.dtype != np.uint8:
        raise ValueError(
            f"{name} follows Pillow and takes uint8 images; got {x.dtype}. "
            "Place it before the 'float' step of the augmentation list."
        )


def apply_lut(x, lut):
    """x[b, h, w, c] -> lut[b, c, x[b, h, w, c]] for a (B, C, 256) lookup table."""
    count, channels = lut.shape[:2]
    flat = lut.reshape(count * channels, 256)
    row = (np.arange(count)[:, None] * channels + np.arange(channels)[None, :])
    return flat[row[:, None, None, :], x]


def blend(degenerate, image, factor):
    """Image.blend(degenerate, image, factor): degenerate + factor * (image -
    degenerate) in single precision, clipped to [0, 255] and truncated."""
    factor = _per_image(factor, len(image))
    degenerate = np.asarray(degenerate, dtype=np.float32)
    out = image.astype(np.float32)
    out -= degenerate
    out *= factor
    out += degenerate
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def _pillow_convert(x, mode, source_mode="RGB"):
    """Pillow's own per-pixel mode conversion, run on the whole batch at once:
    the batch is stacked into one tall image, which changes nothing for an op
    that looks at one pixel at a time."""
    count, height, width = x.shape[:3]
    tall = Image.fromarray(np.ascontiguousarray(x.reshape(count * height, width, 3)), source_mode)
    out = np.asarray(tall.convert(mode))
    return out.reshape((count, height, width) + out.shape[2:])


def luminance(x):
    """Pillow's RGB -> L, (19595 R + 38470 G + 7471 B + 2^15) >> 16; shape (B, H, W)."""
    return _pillow_convert(x, "L")


def grayscale(x):
    """Image.convert('L').convert('RGB')."""
    return np.repeat(luminance(x)[..., None], 3, axis=-1)


def brightness(x, factor):
    """ImageEnhance.Brightness: a blend with black, i.e. factor * x."""
    out = x.astype(np.float32)
    out *= _per_image(factor, len(x))
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def color(x, factor):
    """ImageEnhance.Color (torchvision's saturation): a blend with the grey image."""
    return blend(luminance(x)[..., None], x, factor)


def contrast(x, factor):
    """ImageEnhance.Contrast: a blend with the image's mean grey level, int(mean + 0.5)."""
    mean = luminance(x).reshape(len(x), -1).mean(axis=1)
    degenerate = np.floor(mean + 0.5).astype(np.float32)[:, None, None, None]
    return blend(degenerate, x, factor)


def smooth(x):
    """ImageFilter.SMOOTH: the 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, rounded;
    Pillow copies the one-pixel border unchanged."""
    source = x.astype(np.float32)
    weight = np.float32(1.0 / 13.0)
    total = np.zeros_like(source[:, 1:-1, 1:-1])
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total += source[:, dy:dy + source.shape[1] - 2, dx:dx + source.shape[2] - 2]
    total += 4.0 * source[:, 1:-1, 1:-1]
    out = x.copy()
    out[:, 1:-1, 1:-1] = np.clip(np.floor(total * weight + 0.5), 0, 255).astype(np.uint8)
    return out


def sharpness(x, factor):
    """ImageEnhance.Sharpness: a blend with the smoothed image."""
    return blend(smooth(x), x, factor)


def autocontrast(x):
    """ImageOps.autocontrast (cutoff 0), per channel: [lo, hi] -> [0, 255] with
    int(i * scale + offset); a channel with one level is left alone."""
    count, channels = len(x), x.shape[-1]
    flat = x.reshape(count, -1, channels)
    low = flat.min(axis=1).astype(np.float64)[..., None]
    high = flat.max(axis=1).astype(np.float64)[..., None]
    levels = np.arange(256, dtype=np.float64)[None, None, :]
    spread = np.maximum(high - low, 1.0)
    scale = 255.0 / spread
    stretched = np.clip(np.trunc(levels * scale + (-low * scale)), 0, 255)
    lut = np.where(high > low, stretched, levels).astype(np.uint8)
    return apply_lut(x, lut)


def histograms(x):
    """Per-image, per-channel histograms, shape (B, C, 256)."""
    count, channels = len(x), x.shape[-1]
    offsets = (np.arange(count)[:, None] * channels + np.arange(channels)[None, :]) * 256
    codes = x.reshape(count, -1, channels).astype(np.int64) + offsets[:, None, :]
    return np.bincount(codes.ravel(), minlength=count * channels * 256).reshape(
        count, channels, 256
    )


def equalize(x):
    """ImageOps.equalize, per channel: step = (pixels - count of the last used
    level) // 255; level i maps to (step // 2 + pixels below i) // step; a channel
    with one used level, or step 0, is left alone."""
    hist = histograms(x)
    used = hist > 0
    last_used = 255 - np.argmax(used[..., ::-1], axis=-1)
    last_count = np.take_along_axis(hist, last_used[..., None], axis=-1)[..., 0]
    step = (hist.sum(axis=-1) - last_count) // 255
    below = np.cumsum(hist, axis=-1) - hist
    safe_step = np.maximum(step, 1)[..., None]
    lut = (safe_step // 2 + below) // safe_step
    keep = (used.sum(axis=-1) <= 1) | (step == 0)
    lut = np.where(keep[..., None], np.arange(256)[None, None, :], np.minimum(lut, 255))
    return apply_lut(x, lut.astype(np.uint8))


def posterize(x, bits):
    """ImageOps.posterize: keep the top `bits` bits of each value."""
    bits = np.asarray(bits, dtype=np.int64).reshape(-1, 1, 1, 1)
    mask = (~((1 << (8 - bits)) - 1)) & 0xFF
    return (x & mask.astype(np.uint8)).astype(np.uint8)


def solarize(x, threshold):
    """ImageOps.solarize: invert every value at or above the threshold."""
    threshold = _per_image(threshold, len(x), np.float64)
    return np.where(x < threshold, x, 255 - x).astype(np.uint8)


def invert(x):
    return (255 - x).astype(np.uint8)


def adjust_hue(x, factor):
    """torchvision's adjust_hue on PIL images: to HSV, add int(factor * 255) to H
    modulo 256, back to RGB."""
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float64), (len(x),))
    shift = (np.trunc(factor * 255.0).astype(np.int64) % 256).astype(np.uint8)
    hsv = _pillow_convert(x, "HSV").copy()
    hsv[..., 0] += shift[:, None, None]  # wraps modulo 256, as torchvision's uint8 add
    return _pillow_convert(hsv, "RGB", source_mode="HSV")


# ---------------------------------------------------------------- geometry
def affine_nearest(x, matrices, fill=0):
    """Image.transform(AFFINE, matrix, NEAREST, fillcolor=fill) per image.

    `matrices` (B, 6) map output pixel centres to input coordinates, as Pillow
    does: (x_in, y_in) = (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f);
    the input pixel is (floor(x_in), floor(y_in)); outside the image -> fill.
    """
    count, height, width = x.shape[:3]
    m = np.asarray(matrices, dtype=np.float64).reshape(count, 6)
    # Pillow's nearest-neighbour affine runs in 16.16 fixed point (Geometry.c,
    # affine_fixed) whenever the coordinates fit, as they always do at this size;
    # the same integers pick the same source pixel where a float would round
    # the other way.
    fixed = np.floor(m * 65536.0 + 0.5).astype(np.int32)
    x_start = np.floor((m[:, 2] + m[:, 0] * 0.5 + m[:, 1] * 0.5) * 65536.0 + 0.5).astype(np.int32)
    y_start = np.floor((m[:, 5] + m[:, 3] * 0.5 + m[:, 4] * 0.5) * 65536.0 + 0.5).astype(np.int32)
    rows = np.arange(height, dtype=np.int32)[None, :, None]
    cols = np.arange(width, dtype=np.int32)[None, None, :]

    def source(start, per_column, per_row):
        return (start[:, None, None] + rows * per_row[:, None, None]
                + cols * per_column[:, None, None]) >> 16

    source_x = source(x_start, fixed[:, 0], fixed[:, 1])
    source_y = source(y_start, fixed[:, 3], fixed[:, 4])
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat_index = (np.arange(count, dtype=np.int32)[:, None, None] * height + source_y) * width + source_x
    out = x.reshape(count * height * width, -1)[np.where(inside, flat_index, 0)]
    out = out.reshape(x.shape)
    out[~inside] = fill
    return out


def rotation_matrices(degrees, height, width):
    """Image.rotate(angle) about the image centre, counter-clockwise in degrees:
    the inverse matrix Pillow builds (entries rounded to 15 places, as Pillow does)."""
    angle = -np.radians(np.asarray(degrees, dtype=np.float64))
    cos, sin = np.round(np.cos(angle), 15), np.round(np.sin(angle), 15)
    cx, cy = width / 2.0, height / 2.0
    return np.stack([
        cos, sin, cos * -cx + sin * -cy + cx,
        -sin, cos, -sin * -cx + cos * -cy + cy,
    ], axis=-1)


def translation_matrices(dx, dy):
    """A shift right by dx and down by dy pixels (torchvision's affine with
    integer translate, angle 0): the output at (x, y) reads (x - dx, y - dy)."""
    dx = np.asarray(dx, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    one, zero = np.ones_like(dx), np.zeros_like(dx)
    return np.stack([one, zero, -dx, zero, one, -dy], axis=-1)


def shear_matrices(factor, axis):
    """torchvision AutoAugment's ShearX/ShearY: shear angle atan(factor) about
    the top-left corner, so the output at (x, y) reads x + factor * y (ShearX)."""
    factor = np.asarray(factor, dtype=np.float64)
    one, zero = np.ones_like(factor), np.zeros_like(factor)
    if axis == "x":
        return np.stack([one, factor, zero, zero, one, zero], axis=-1)
    return np.stack([one, zero, zero, factor, one, zero], axis=-1)
