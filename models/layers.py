"""Layer builders that reproduce PyTorch's conventions in Keras (papers 000-003).

- Convs before BatchNorm have no bias.
- BatchNorm: PyTorch momentum 0.1 is Keras momentum 0.9; epsilon 1e-5; the
  moving variance takes the unbiased batch variance, as PyTorch's running_var.
- Default init: PyTorch's kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)),
  i.e. VarianceScaling(1/3, "fan_in", "uniform"); a layer's bias is
  U(+-1/sqrt(fan_in)) too.
- Padding: PyTorch's padding=k//2 pads both sides. Keras's padding="same" with
  stride 2 on an even input pads only bottom/right, which samples other pixels,
  so strided convs pad explicitly and then convolve with "valid".
"""

import math

import keras
from keras import layers

from models import native

TORCH_BN = dict(momentum=0.9, epsilon=1e-5, unbiased_moving_variance=True)


def torch_uniform(fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def torch_kernel_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def kaiming_normal():
    """torch.nn.init.kaiming_normal_ (fan_in, ReLU gain, untruncated)."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def torch_pad(x, kernel_size, strides, name):
    """Symmetric zero padding for a strided conv; returns (x, keras padding)."""
    if strides > 1 and kernel_size > 1:
        return layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x), "valid"
    return x, ("same" if kernel_size > 1 else "valid")


def conv(x, filters, kernel_size, strides=1, *, name, use_bias=False, init=None):
    """A PyTorch-style Conv2d(padding=kernel_size // 2)."""
    x, padding = torch_pad(x, kernel_size, strides, name)
    fan_in = x.shape[-1] * kernel_size * kernel_size
    return native.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        kernel_initializer=init or torch_kernel_init(),
        bias_initializer=torch_uniform(fan_in), name=name,
    )(x)


def depthwise_conv(x, kernel_size, strides=1, *, name):
    """A PyTorch Conv2d(groups=channels, bias=False): fan_in is kernel_size**2."""
    x, padding = torch_pad(x, kernel_size, strides, name)
    return native.DepthwiseConv2D(
        kernel_size, strides=strides, padding=padding, use_bias=False,
        depthwise_initializer=torch_uniform(kernel_size * kernel_size), name=name,
    )(x)


def batch_norm(x, *, name):
    return native.BatchNormalization(**TORCH_BN, name=name)(x)


# The classifier computes its logits in float32 under a mixed-precision policy
# too (as Keras's mixed-precision guide advises): bf16 logits carry 8 bits of
# mantissa into the softmax. One small matmul; under float32 it changes nothing.
LOGITS_DTYPE = "float32"


def dense(x, units, *, name, init=None):
    """A PyTorch nn.Linear (logits out)."""
    return layers.Dense(
        units, kernel_initializer=init or torch_kernel_init(),
        bias_initializer=torch_uniform(x.shape[-1]), name=name, dtype=LOGITS_DTYPE,
    )(x)


@keras.saving.register_keras_serializable(package="cifar_repro")
class SubsampleChannelPad(layers.Layer):
    """He et al.'s option-A shortcut: keep every `strides`-th pixel (from the
    first) and zero-pad the channels equally on both sides. No parameters."""

    direct_call = True  # a plain function of its input: native_graph.Network may skip __call__

    def __init__(self, strides, channels_before, channels_after, **kwargs):
        super().__init__(**kwargs)
        self.strides = int(strides)
        self.channels_before = int(channels_before)
        self.channels_after = int(channels_after)

    def call(self, x):
        x = x[:, :: self.strides, :: self.strides, :]
        if keras.backend.backend() == "torch" and type(x).__module__ == "torch":
            import torch

            # The same zeros without keras.ops.pad's dispatch (cost: reports/throughput_notes.md).
            return torch.nn.functional.pad(x, (self.channels_before, self.channels_after))
        return keras.ops.pad(
            x, [[0, 0], [0, 0], [0, 0], [self.channels_before, self.channels_after]]
        )

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape

        def shrink(size):
            return None if size is None else -(-size // self.strides)

        return (batch, shrink(height), shrink(width),
                channels + self.channels_before + self.channels_after)

    def get_config(self):
        config = super().get_config()
        config.update(strides=self.strides, channels_before=self.channels_before,
                      channels_after=self.channels_after)
        return config
