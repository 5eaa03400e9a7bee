"""A trained network as a self-contained inference model of plain Keras layers.

`inference_model(model, normalizer)` takes raw pixels (0-255, uint8 or float, any
batch of 32x32x3 images), applies the normalisation the network was trained with
as Keras preprocessing layers, and runs a copy of the network in which every
layer of the suite's own is replaced by the plain Keras layer it computes as
(native.Conv2D by keras.layers.Conv2D, He et al.'s option-A shortcut by a fixed
1x1 convolution, ...), in float32. Its .keras file therefore loads with
`keras.saving.load_model` in any Python that has Keras, on any backend, with no
import of this repository, and gives logits.
"""

import keras
import numpy as np
from keras import layers

from models import native
from models.layers import SubsampleChannelPad

# The suite's layers and the plain Keras classes whose config and weights they share.
PLAIN = {native.Conv2D: layers.Conv2D, native.DepthwiseConv2D: layers.DepthwiseConv2D,
         native.BatchNormalization: layers.BatchNormalization, native.Dropout: layers.Dropout}
OWN_CONFIG_KEYS = ("unbiased_moving_variance",)  # training-time only; inference is the same


class ExportError(ValueError):
    """A network with a layer that has no plain Keras equivalent."""


def normalization_layers(normalizer, image_shape=(32, 32, 3)):
    """Keras layers that compute `normalizer` (data.normalize.Normalizer, fitted) on
    raw 0-255 pixels."""
    kind = normalizer.kind
    if kind == "scale":
        return [layers.Rescaling(1.0 / 255.0, name="scale")]
    if kind == "channel":  # mean and std are held on the 0-255 scale
        return [layers.Normalization(axis=-1, mean=normalizer.mean.tolist(),
                                     variance=(normalizer.std ** 2).tolist(), name="standardize")]
    if kind == "per_image":
        # (x - mean) / max(std, 1/sqrt(n)) per image: LayerNormalization over all of an
        # image's values with epsilon 1/n differs only for near-constant images.
        count = int(np.prod(image_shape))
        return [layers.LayerNormalization(axis=[1, 2, 3], epsilon=1.0 / count, center=False,
                                          scale=False, name="per_image_standardize")]
    if kind in ("per_pixel", "per_pixel_mean"):
        spread = (normalizer.std + np.float32(1e-7)) if kind == "per_pixel" else np.ones_like(
            normalizer.mean)
        standardize = layers.Normalization(axis=(1, 2, 3), mean=normalizer.mean.tolist(),
                                           variance=(spread ** 2).tolist(), name="per_pixel")
        if kind == "per_pixel" and normalizer.scale_bug:  # statistics of x/255 applied to x
            return [standardize]
        return [layers.Rescaling(1.0 / 255.0, name="scale"), standardize]
    raise ExportError(f"normalization {kind!r} has no Keras layer here.")


def _plain_layer(layer):
    """A fresh plain-Keras layer computing `layer` at inference, in float32."""
    config = {**layer.get_config(), "dtype": "float32"}
    if isinstance(layer, SubsampleChannelPad):
        # Every strides-th pixel, channels zero-padded: a fixed 1x1 convolution whose
        # kernel places input channel c at output channel channels_before + c.
        return layers.Conv2D(
            layer.channels_before + layer.input.shape[-1] + layer.channels_after, 1,
            strides=layer.strides, use_bias=False, trainable=False, name=layer.name,
            dtype="float32")
    plain = next((target for source, target in PLAIN.items() if type(layer) is source), None)
    if plain is not None:
        for key in OWN_CONFIG_KEYS:
            config.pop(key, None)
        return plain.from_config(config)
    if type(layer).__module__.startswith("keras."):
        return type(layer).from_config(config)
    raise ExportError(f"layer {layer.name} ({type(layer).__name__}) has no plain Keras "
                      f"equivalent; add it to models/export.py.")


def _copy_weights(source, target):
    if isinstance(source, SubsampleChannelPad):
        channels = source.input.shape[-1]
        kernel = np.zeros((1, 1, channels, target.filters), np.float32)
        kernel[0, 0, np.arange(channels), source.channels_before + np.arange(channels)] = 1.0
        target.set_weights([kernel])
    else:
        target.set_weights([np.asarray(keras.ops.convert_to_numpy(w), np.float32)
                            for w in source.weights])


def inference_model(model, normalizer, name=None):
    """Raw pixels -> normalisation -> a plain-Keras copy of `model` -> logits."""
    if not hasattr(model, "_run_through_graph"):  # Keras's functional graph walker
        raise ExportError(f"{type(model).__name__} is not a functional model; cannot export it.")
    shape = tuple(model.inputs[0].shape[1:])
    raw = keras.Input(shape, name="pixels")
    x = raw
    for layer in normalization_layers(normalizer, shape):
        x = layer(x)
    pairs = []

    def plain(layer):
        copy = _plain_layer(layer)
        pairs.append((layer, copy))
        return copy

    outputs = model._run_through_graph(x, operation_fn=plain)
    exported = keras.Model(raw, outputs, name=name or f"{model.name}_inference")
    for source, target in pairs:
        _copy_weights(source, target)
    return exported


def save_inference_model(model, normalizer, path):
    """inference_model(...) written to `path` (a .keras file), atomically."""
    from foundation.files import atomic_file

    atomic_file(path, inference_model(model, normalizer).save)
    return path
