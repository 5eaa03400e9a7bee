"""The device path: crop, flip, shift, Cutout, the tensor grayscale/autocontrast,
the normalisation and mixup/CutMix run inside the compiled training step.

The host still draws every random number, with the draw_* functions the host ops
call (data/augment.py) and the same (seed, epoch, index) keys, and sends a batch
as uint8 images plus those draws (a few numbers per image). The network then
trains inside a wrapper model whose first layer, `DeviceAugment`, applies the ops
with keras.ops on whatever device the backend computes on. The result equals the
host path's: bit for bit for crop, flip and Cutout on uint8 images; within
float32 rounding where the host computes in another order or in float64
(normalisation, the shift's bilinear sum, mixup) (tests/test_device_augment.py).

The ops that follow Pillow (AutoAugment, colour jitter, rotation, translation,
grayscale and autocontrast on uint8) stay on the host: `unsupported` names them.
"""

import numpy as np

import keras
from keras import ops

from data.augment import DRAWS, Augmenter
from data.pipeline import CifarBatches

PATHS = ("auto", "host", "device")
FLOAT_ONLY = ("grayscale", "autocontrast")  # on uint8 images these follow Pillow


def unsupported(recipe, distribute="none"):
    """Why `recipe` cannot train on the device path, or None when it can."""
    names = [entry.get("op") for entry in recipe.augment or ()]
    is_float = recipe.normalization.build().stage == "before"
    for name in names:
        is_float = is_float or name == "float"
        if name not in DRAWS or (name in FLOAT_ONLY and not is_float):
            return f"its augmentation {name!r} follows Pillow on uint8 images (host only)"
    if distribute != "none":
        return f"--distribute {distribute} (the device path runs on one device)"
    return None


def choose_path(requested, recipe, has_gpu, distribute="none"):
    """'host' or 'device': `requested` ('auto' takes the device path on a GPU where
    the recipe allows it, else the host path). Raises ValueError for 'device' on a
    recipe that cannot take it."""
    if requested not in PATHS:
        raise ValueError(f"augment path must be one of {PATHS}; got {requested!r}.")
    reason = unsupported(recipe, distribute)
    if requested == "device" and reason:
        raise ValueError(f"{recipe.name} cannot augment on the device: {reason}. "
                         f"Pass --augment-on host (or auto).")
    if requested == "auto":
        return "device" if has_gpu and reason is None else "host"
    return requested


def _as_input(value):
    value = np.asarray(value)
    if value.dtype == bool or np.issubdtype(value.dtype, np.integer):
        return value.astype(np.int32)
    return value.astype(np.float32)


class DeviceBatches(CifarBatches):
    """CifarBatches for the device path: ({"images": uint8, draws...}, labels), the
    labels (mixed on the host from the same draws) exactly as the host path's."""

    def __init__(self, images, labels, num_classes, batch_size, *, augment=None, mix=None,
                 training=True, **kwargs):
        super().__init__(images, labels, num_classes, batch_size, augment=augment, mix=mix,
                         **kwargs)
        self.ops = augment.ops if augment else []
        self.mix_kind = mix.kind if mix else None
        self.training = training

    def make(self, epoch, index):
        picked = self.picked(epoch, index)
        x = self.images[picked]
        inputs = {"images": x}
        # Validation batches carry draws of the same shapes, which the layer does not
        # apply outside training.
        rng = np.random.default_rng([self.seed, epoch, 1, index] if self.training else 0)
        for position, (name, options) in enumerate(self.ops):
            drawn = DRAWS[name](rng, x.shape, **options)
            inputs.update({f"aug{position}_{key}": _as_input(value)
                           for key, value in drawn.items()})
        y = self.one_hot(picked)
        if self.mix_kind:
            params = self.mix.params(self.seed, epoch, index, x.shape) if self.training else None
            y = self.mix.mix_labels(y, params)
            count = len(x)
            if params is None:  # unmixed: each image with itself, all of it kept
                params = {"lam": 1.0, "partner": np.arange(count), "box": (0, 0, 0, 0)}
            inputs["mix_lam"] = np.full(count, params["lam"], np.float32)
            inputs["mix_partner"] = params["partner"].astype(np.int32)
            if self.mix_kind == "cutmix":
                inputs["mix_box"] = np.tile(np.asarray(params["box"], np.int32), (count, 1))
        return inputs, self.labels_out(y, picked)


# ------------------------------------------------------------------ the ops, in keras.ops

def _rows(x, rows):
    """x[b, rows[b, i]] for each image b; rows (B, H')."""
    shape = ops.shape(x)
    index = ops.broadcast_to(rows[:, :, None, None], (shape[0], ops.shape(rows)[1],
                                                       shape[2], shape[3]))
    return ops.take_along_axis(x, index, axis=1)


def _cols(x, cols):
    """x[b, :, cols[b, j]] for each image b; cols (B, W')."""
    shape = ops.shape(x)
    index = ops.broadcast_to(cols[:, None, :, None], (shape[0], shape[1],
                                                       ops.shape(cols)[1], shape[3]))
    return ops.take_along_axis(x, index, axis=2)


def _per_image(value):
    return ops.reshape(value, (-1, 1, 1, 1))


def crop(x, drawn, is_float, padding=4, fill=0):
    height, width = x.shape[1], x.shape[2]
    padded = ops.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]],
                     constant_values=fill)
    rows = drawn["top"][:, None] + ops.arange(height, dtype="int32")[None, :]
    cols = drawn["left"][:, None] + ops.arange(width, dtype="int32")[None, :]
    return _cols(_rows(padded, rows), cols)


def hflip(x, drawn, is_float, p=0.5):
    return ops.where(_per_image(drawn["chosen"]) > 0, ops.flip(x, axis=2), x)


def vflip(x, drawn, is_float, p=0.5):
    return ops.where(_per_image(drawn["chosen"]) > 0, ops.flip(x, axis=1), x)


def shift(x, drawn, is_float, fraction=0.1):
    height, width = x.shape[1], x.shape[2]
    r0 = drawn["row0"][:, None] + ops.arange(height, dtype="int32")[None, :]
    c0 = drawn["col0"][:, None] + ops.arange(width, dtype="int32")[None, :]
    r1, c1 = ops.clip(r0 + 1, 0, height - 1), ops.clip(c0 + 1, 0, width - 1)
    r0, c0 = ops.clip(r0, 0, height - 1), ops.clip(c0, 0, width - 1)
    top, bottom = _rows(x, r0), _rows(x, r1)
    wy, wx = _per_image(drawn["wy"]), _per_image(drawn["wx"])
    out = ((1 - wy) * (1 - wx) * _cols(top, c0) + (1 - wy) * wx * _cols(top, c1)
           + wy * (1 - wx) * _cols(bottom, c0) + wy * wx * _cols(bottom, c1))
    return out if is_float else ops.clip(ops.round(out), 0, 255)


def _box_mask(shape, top, bottom, left, right):
    """(B, H, W, 1): inside each image's rows [top, bottom) and columns [left, right)."""
    rows = ops.arange(shape[1], dtype="int32")[None, :]
    cols = ops.arange(shape[2], dtype="int32")[None, :]
    row_in = ops.logical_and(rows >= top[:, None], rows < bottom[:, None])
    col_in = ops.logical_and(cols >= left[:, None], cols < right[:, None])
    return ops.logical_and(row_in[:, :, None, None], col_in[:, None, :, None])


def cutout(x, drawn, is_float, size=16, low=-8, high=16, shrink_at_edge=True):
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    if not is_float:
        mean = ops.round(mean)
    mask = _box_mask(x.shape, drawn["top"], drawn["bottom"], drawn["left"], drawn["right"])
    return ops.where(mask, mean, x)


def grayscale(x, drawn, is_float, p=0.1):
    grey = x[..., 0:1] * 0.2989 + x[..., 1:2] * 0.587 + x[..., 2:3] * 0.114
    return ops.where(_per_image(drawn["chosen"]) > 0, ops.repeat(grey, 3, axis=-1), x)


def autocontrast(x, drawn, is_float, p=0.5, bound=255.0):
    low = ops.min(x, axis=(1, 2), keepdims=True)
    high = ops.max(x, axis=(1, 2), keepdims=True)
    flat = high <= low
    scale = ops.where(flat, 1.0, bound / ops.where(flat, 1.0, high - low))
    low = ops.where(flat, 0.0, low)
    stretched = ops.clip((x - low) * scale, 0.0, bound)
    return ops.where(_per_image(drawn["chosen"]) > 0, stretched, x)


OPS = {"float": lambda x, drawn, is_float: x, "crop": crop, "hflip": hflip, "vflip": vflip,
       "shift": shift, "cutout": cutout, "grayscale": grayscale, "autocontrast": autocontrast}


def normalize(x, kind, mean=None, std=None, scale_bug=False):
    """data.normalize.Normalizer's formulas, in keras.ops."""
    if kind == "scale":
        return x * np.float32(1.0 / 255.0)
    if kind == "channel":
        return (x - mean) / std
    if kind == "per_image":
        floor = np.float32(1.0 / np.sqrt(np.prod(x.shape[1:])))
        centred = x - ops.mean(x, axis=(1, 2, 3), keepdims=True)
        spread = ops.sqrt(ops.mean(ops.square(centred), axis=(1, 2, 3), keepdims=True))
        return centred / ops.maximum(spread, floor)
    if kind == "per_pixel_mean":
        return x * np.float32(1.0 / 255.0) - mean
    if scale_bug:
        return (x - mean) / (std + np.float32(1e-7))
    return (x * np.float32(1.0 / 255.0) - mean) / (std + np.float32(1e-7))


class DeviceAugment(keras.layers.Layer):
    """uint8 images and their draws in, the normalised (and mixed) batch out."""

    def __init__(self, steps, normalizer, mix_kind=None, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.steps, self.mix_kind = steps, mix_kind
        self.norm_kind, self.stage = normalizer.kind, normalizer.stage
        self.scale_bug = normalizer.scale_bug
        self.mean = None if normalizer.mean is None else np.asarray(normalizer.mean, np.float32)
        self.std = None if normalizer.std is None else np.asarray(normalizer.std, np.float32)

    def _normalize(self, x):
        return normalize(x, self.norm_kind, self.mean, self.std, self.scale_bug)

    def augment(self, inputs, training=True):
        """The images after the ops (normalised first under stage 'before'); outside
        training, normalised only."""
        x = ops.cast(inputs["images"], "float32")
        is_float = self.stage == "before"
        if is_float:
            x = self._normalize(x)
        for position, (name, options) in enumerate(self.steps if training else ()):
            prefix = f"aug{position}_"
            drawn = {key[len(prefix):]: value for key, value in inputs.items()
                     if key.startswith(prefix)}
            is_float = is_float or name == "float"
            x = OPS[name](x, drawn, is_float, **options)
        return x

    def call(self, inputs, training=False):
        x = self.augment(inputs, training)
        if self.stage == "after":
            x = self._normalize(x)
        if self.mix_kind and training:
            partner = ops.take(x, inputs["mix_partner"], axis=0)
            if self.mix_kind == "mixup":
                lam = _per_image(inputs["mix_lam"])
                x = lam * x + (1.0 - lam) * partner
            else:
                box = inputs["mix_box"]
                mask = _box_mask(x.shape, box[:, 0], box[:, 1], box[:, 2], box[:, 3])
                x = ops.where(mask, partner, x)
        return x


def _input_specs(batches, sample):
    """keras.Input for each entry of a batch's inputs."""
    specs = {}
    for key, value in sample.items():
        value = np.asarray(value)
        specs[key] = keras.Input(shape=value.shape[1:], dtype=value.dtype.name, name=key)
    return specs


def training_model(network, batches, normalizer):
    """A model that trains `network` (the same variables) from DeviceBatches' inputs.
    `trainer.network` is the network, which the checkpoint callbacks save."""
    sample, _ = batches.make(0, 0)
    inputs = _input_specs(batches, sample)
    augment = DeviceAugment(batches.ops, normalizer, batches.mix_kind, name="device_augment")
    trainer = keras.Model(inputs, network(augment(inputs)), name=f"{network.name}_trainer")
    trainer.network = network
    return trainer


def device_batches(recipe, options_seed, threads, normalizer, train, val, num_classes):
    """Training and validation DeviceBatches for a recipe."""
    mix, column = recipe.mixup, bool(recipe.mixup)
    augment = Augmenter(recipe.augment)
    train_batches = DeviceBatches(*train, num_classes, recipe.batch_size, augment=augment,
                                  mix=mix, shuffle=True, seed=options_seed, threads=threads,
                                  label_column=column)
    val_batches = DeviceBatches(*val, num_classes, recipe.eval_batch_size, augment=augment,
                                mix=mix, training=False, label_column=column)
    return train_batches, val_batches
