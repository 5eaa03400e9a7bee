"""Conv2D, DepthwiseConv2D and BatchNormalization that, on the PyTorch backend,
call PyTorch's channels-last kernels directly; on TensorFlow and JAX they are
Keras's layers unchanged.

Why: Keras 3.15's PyTorch backend copies every NHWC activation into a
contiguous NCHW tensor and then into channels-last memory before each
convolution (and back in the backward pass), and computes BatchNorm from
separate mean/square/subtract/multiply ops. An NHWC tensor permuted to NCHW
*is* a channels-last tensor, so oneDNN can take it as it is, and
`torch.nn.functional.batch_norm` does the normalisation in one fused kernel
with its own backward. Measured on a 2-core CPU (ResNet-20 training, batch
128, benchmarks/throughput.py): the copies and the unfused BatchNorm were
about a quarter of the step.

The layers compute the same function with the same variables, and save and
load as these classes (`cifar_repro>Conv2D`, ...); tests/test_models.py
compares them with Keras's own implementation on the PyTorch backend.
Cases the shortcut does not cover (unknown spatial sizes; masks; renorm;
synchronized statistics; channels-first data) go through Keras's implementation.
"""

import keras
from keras import layers, ops

# Tests flip this to compare against Keras's own implementation in one process.
NATIVE_TORCH = True


def _use_torch(data_format="channels_last"):
    return (NATIVE_TORCH and keras.backend.backend() == "torch"
            and data_format == "channels_last")


def _same_padding(layer, input_shape):
    """Keras's "same" padding per spatial side, ((top, bottom), (left, right)):
    the extra pixel of an odd total goes to the bottom/right, as in TensorFlow."""
    padding = []
    for size, kernel, stride, rate in zip(input_shape[1:3], layer.kernel_size, layer.strides,
                                          layer.dilation_rate):
        total = max((-(-size // stride) - 1) * stride + (kernel - 1) * rate + 1 - size, 0)
        padding.append((total // 2, total - total // 2))
    return padding


def _channels_last_view(inputs):
    """NHWC as PyTorch's NCHW in channels-last memory: a view of a contiguous NHWC
    tensor, a copy only for other strides (a strided slice)."""
    import torch

    return ops.convert_to_tensor(inputs).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)


def _native_conv(layer, inputs):
    return _use_torch(layer.data_format) and None not in inputs.shape[1:3]


def _torch_conv2d(inputs, kernel_oihw, layer, groups):
    """NHWC in, NHWC out, through oneDNN's channels-last convolution (no copies
    but for an asymmetric "same" padding)."""
    import torch

    x = _channels_last_view(inputs)
    padding = 0
    if layer.padding == "same":
        (top, bottom), (left, right) = _same_padding(layer, inputs.shape)
        if top == bottom and left == right:
            padding = (top, left)
        else:  # PyTorch's padding argument is symmetric: pad explicitly
            x = torch.nn.functional.pad(x, (left, right, top, bottom)).contiguous(
                memory_format=torch.channels_last)
    outputs = torch.nn.functional.conv2d(x, kernel_oihw, stride=layer.strides, padding=padding,
                                         dilation=layer.dilation_rate, groups=groups)
    return outputs.permute(0, 2, 3, 1)


def _bias_and_activation(layer, outputs, channels):
    if layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1, 1, 1, channels)))
    return layer.activation(outputs) if layer.activation is not None else outputs


@keras.saving.register_keras_serializable(package="cifar_repro")
class Conv2D(layers.Conv2D):
    __doc__ = layers.Conv2D.__doc__

    def convolution_op(self, inputs, kernel):
        if not _native_conv(self, inputs):
            return super().convolution_op(inputs, kernel)
        # Keras's kernel is (h, w, in, out); PyTorch's (out, in, h, w).
        kernel = ops.convert_to_tensor(kernel).permute(3, 2, 0, 1)
        return _torch_conv2d(inputs, kernel, self, self.groups)


@keras.saving.register_keras_serializable(package="cifar_repro")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    __doc__ = layers.DepthwiseConv2D.__doc__

    def call(self, inputs):
        if not _native_conv(self, inputs):
            return super().call(inputs)
        height, width, channels, multiplier = self.kernel.shape
        # Keras's (h, w, in, multiplier) -> PyTorch's grouped (in * multiplier, 1, h, w);
        # output channel c * multiplier + j in both.
        kernel = ops.convert_to_tensor(self.kernel).reshape(
            height, width, 1, channels * multiplier).permute(3, 2, 0, 1)
        outputs = _torch_conv2d(inputs, kernel, self, groups=channels)
        return _bias_and_activation(self, outputs, channels * multiplier)


@keras.saving.register_keras_serializable(package="cifar_repro")
class BatchNormalization(layers.BatchNormalization):
    __doc__ = layers.BatchNormalization.__doc__

    def call(self, inputs, training=None, mask=None):
        if not (_use_torch() and mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)):
            return super().call(inputs, training=training, mask=mask)
        import torch

        # As Keras: statistics in float32 (or wider) whatever the compute dtype.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        channels_first = _channels_last_view(ops.cast(inputs, dtype))
        gamma = ops.cast(self.gamma.value, dtype) if self.scale else None
        beta = ops.cast(self.beta.value, dtype) if self.center else None
        if training and self.trainable:
            # The fused kernel hands out the batch statistics through running
            # buffers with momentum 1 (the variance with Bessel's correction,
            # undone here); Keras's moving averages are then updated from them.
            channels = channels_first.shape[1]
            mean = channels_first.new_zeros(channels)
            variance = channels_first.new_ones(channels)
            outputs = torch.nn.functional.batch_norm(
                channels_first, mean, variance, gamma, beta, training=True, momentum=1.0,
                eps=self.epsilon)
            count = channels_first.numel() // channels
            variance = variance * ((count - 1) / count)
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                moving.assign(moving.value * self.momentum + batch * (1.0 - self.momentum))
        else:
            outputs = torch.nn.functional.batch_norm(
                channels_first, ops.cast(self.moving_mean.value, dtype),
                ops.cast(self.moving_variance.value, dtype), gamma, beta, training=False,
                eps=self.epsilon)
        return ops.cast(outputs.permute(0, 2, 3, 1), self.compute_dtype)
