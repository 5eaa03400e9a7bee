"""Conv2D, DepthwiseConv2D, BatchNormalization and Dropout that, on the PyTorch
backend, call PyTorch's channels-last kernels directly; elsewhere (TensorFlow, JAX,
cases the shortcut does not cover) they are Keras's layers unchanged.

Why: Keras 3.15's PyTorch backend copies every NHWC activation twice around a
convolution and builds BatchNorm from separate ops, about a quarter of a ResNet-20
step; an NHWC tensor permuted to NCHW is already channels-last for oneDNN. Same
function, same variables (tests/test_native_torch.py); the measurements behind each
choice are in reports/throughput_notes.md. The recipe's `fast_path` switches
this module and native_graph.py off (NATIVE_TORCH).
"""

import functools

import keras
from keras import layers, ops
from keras.src import backend as keras_backend
from keras.src.backend.common.stateless_scope import in_stateless_scope

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


def _torch_dtype(name):
    import torch

    return getattr(torch, name)


def _channels_last_view(inputs):
    """NHWC as PyTorch's NCHW in channels-last memory: a view of a contiguous NHWC
    tensor, a copy only for other strides (a strided slice)."""
    import torch

    return _as_tensor(inputs).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _as_tensor(value):
    """A torch tensor as it is (skipping ops.convert_to_tensor's dispatch, three
    times a layer); anything else through Keras."""
    import torch

    return value if type(value) is torch.Tensor else ops.convert_to_tensor(value)


def _native_conv(layer, inputs):
    return _use_torch(layer.data_format) and None not in inputs.shape[1:3]


def _torch_conv2d(inputs, kernel_oihw, layer, groups, bias=None, padding=(0, 0)):
    """NHWC in, NHWC out, through oneDNN's channels-last convolution (no copies
    but for an asymmetric "same" padding); `bias`, where given, is added by the
    convolution itself; `padding` (rows, columns on each side) is the zeros
    of a ZeroPadding2D folded into a "valid" convolution."""
    import torch

    x = _channels_last_view(inputs)
    if layer.padding == "same":
        (top, bottom), (left, right) = _same_padding(layer, inputs.shape)
        if top == bottom and left == right:
            padding = (top, left)
        else:  # PyTorch's padding argument is symmetric: pad explicitly
            x = torch.nn.functional.pad(x, (left, right, top, bottom)).contiguous(
                memory_format=torch.channels_last)
    arguments = (tuple(layer.strides), tuple(padding), tuple(layer.dilation_rate), groups)
    if (groups > 1 and groups == x.shape[1] and max(layer.strides) > 1
            and x.dtype == torch.bfloat16 and x.device.type == "cpu" and torch.is_grad_enabled()):
        outputs = _strided_depthwise_conv().apply(x, kernel_oihw, bias, *arguments)
    else:
        outputs = torch.nn.functional.conv2d(x, kernel_oihw, bias, *arguments)
    return outputs.permute(0, 2, 3, 1)


@functools.cache
def _strided_depthwise_conv():
    """conv2d as an autograd Function whose input gradient is computed in
    float32: for bf16 tensors on a CPU, depthwise convolutions with a stride.

    Why: for a strided depthwise convolution in bf16, oneDNN's backward-data
    pass (brgconv_strided) is many times slower than in float32 on a CPU
    without AMX; with the casts (the output gradient and the kernel to float32,
    the input gradient back) it is not (measurements: reports/throughput_notes.md). The forward pass and the kernel's
    gradient stay in bf16, where they are fast. The input gradient is the same
    sum, rounded to bf16 once (bf16 oneDNN accumulates in float32 too). Built
    on first use, since torch is only imported on the PyTorch backend.
    """
    import torch

    class StridedDepthwiseConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, kernel, bias, stride, padding, dilation, groups):
            ctx.save_for_backward(x, kernel)
            ctx.arguments = (stride, padding, dilation, groups)
            ctx.bias_shape = None if bias is None else list(bias.shape)
            return torch.nn.functional.conv2d(x, kernel, bias, stride, padding, dilation, groups)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            x, kernel = ctx.saved_tensors
            stride, padding, dilation, groups = ctx.arguments
            grad = grad.contiguous(memory_format=torch.channels_last)
            backward = torch.ops.aten.convolution_backward
            grad_x = grad_kernel = grad_bias = None
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                _, grad_kernel, grad_bias = backward(
                    grad, x, kernel, ctx.bias_shape, stride, padding, dilation, False,
                    [0, 0], groups, [False, ctx.needs_input_grad[1],
                                     ctx.needs_input_grad[2]])
            if ctx.needs_input_grad[0]:
                # Only the shape and memory format of the input matter here.
                like = torch.empty(x.shape, dtype=torch.float32,
                                   memory_format=torch.channels_last)
                grad_x = backward(grad.float(), like, kernel.float(), None, stride, padding,
                                  dilation, False, [0, 0], groups,
                                  [True, False, False])[0].to(x.dtype)
            return grad_x, grad_kernel, grad_bias, None, None, None, None

    return StridedDepthwiseConv


def _native_conv_call(layer, inputs, padding=(0, 0)):
    """A convolution layer's call on the PyTorch kernels: the bias added by the
    convolution itself, as PyTorch's Conv2d adds it (Keras adds it in a second
    pass over the whole activation)."""
    bias = ops.convert_to_tensor(layer.bias) if layer.use_bias else None
    outputs = _torch_conv2d(inputs, layer.torch_kernel(), layer, _groups(layer), bias, padding)
    return layer.activation(outputs) if layer.activation is not None else outputs


@keras.saving.register_keras_serializable(package="cifar_repro")
class Conv2D(layers.Conv2D):
    __doc__ = layers.Conv2D.__doc__

    def call(self, inputs):
        if not _native_conv(self, inputs):
            return super().call(inputs)
        return _native_conv_call(self, inputs)

    def torch_kernel(self):
        """The kernel (read as Keras reads it: in the autocast dtype under mixed
        precision) in PyTorch's layout: Keras's (h, w, in, out) as (out, in, h, w)."""
        return ops.convert_to_tensor(self.kernel).permute(3, 2, 0, 1)


@keras.saving.register_keras_serializable(package="cifar_repro")
class DepthwiseConv2D(layers.DepthwiseConv2D):
    __doc__ = layers.DepthwiseConv2D.__doc__

    def call(self, inputs):
        if not _native_conv(self, inputs):
            return super().call(inputs)
        return _native_conv_call(self, inputs)

    def torch_kernel(self):
        """The kernel (read as Keras reads it) in PyTorch's grouped layout: Keras's
        (h, w, in, multiplier) as (in * multiplier, 1, h, w); output channel
        c * multiplier + j in both."""
        height, width, channels, multiplier = self.kernel.shape
        return ops.convert_to_tensor(self.kernel).reshape(
            height, width, 1, channels * multiplier).permute(3, 2, 0, 1)


def _groups(layer):
    """PyTorch's `groups` for a convolution: one per input channel for a depthwise one."""
    return layer.kernel.shape[2] if isinstance(layer, layers.DepthwiseConv2D) else layer.groups


@keras.saving.register_keras_serializable(package="cifar_repro")
class BatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization; with `unbiased_moving_variance=True` the moving
    variance is updated, as torch.nn.BatchNorm2d's running_var is, with the batch
    variance times n / (n - 1) (n values per channel). The batch is normalised
    with the biased variance either way."""

    def __init__(self, *args, unbiased_moving_variance=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)

    def get_config(self):
        return {**super().get_config(), "unbiased_moving_variance": self.unbiased_moving_variance}

    def _keras_call_unbiased(self, inputs, training):
        """Keras's training-mode call with PyTorch's moving-variance update."""
        compute_dtype = keras_backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        mean, variance = self._moments(inputs, None)
        count = ops.cast(ops.size(inputs), compute_dtype) / inputs.shape[-1]
        unbiased = variance * (count / (count - 1.0))
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, unbiased)):
            moving.assign(ops.cast(moving, compute_dtype) * self.momentum
                          + batch * (1.0 - self.momentum))
        cast = (lambda weight: ops.cast(weight, compute_dtype) if weight is not None else None)
        outputs = ops.batch_normalization(
            inputs, mean, variance, axis=self.axis, offset=cast(self.beta if self.center else None),
            scale=cast(self.gamma if self.scale else None), epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def call(self, inputs, training=None, mask=None):
        keras_only = not (_use_torch() and mask is None and not self.renorm
                          and not self.synchronized and len(inputs.shape) == 4
                          and self.axis in (-1, 3))
        if keras_only:
            if (self.unbiased_moving_variance and training and self.trainable and mask is None
                    and not self.renorm and self.axis in (-1, len(inputs.shape) - 1)):
                return self._keras_call_unbiased(inputs, training)
            return super().call(inputs, training=training, mask=mask)
        import torch

        # As Keras: statistics in float32 (or wider) whatever the compute dtype.
        # Keras upcasts a bf16/fp16 input, normalises and casts back; PyTorch's
        # batch_norm takes the bf16/fp16 input with float32 parameters and
        # statistics as they are and computes in float32 inside the kernel
        # (the same numbers, without two copies of the activation). Torch's own
        # casts: `.to` is free when the dtype already matches (Keras's ops.cast
        # is a Python-level call each time).
        inputs = _as_tensor(inputs)
        dtype = torch.promote_types(inputs.dtype, torch.float32)
        half = inputs.dtype in (torch.bfloat16, torch.float16)
        channels_first = _channels_last_view(inputs if half else inputs.to(dtype))
        gamma = self.gamma.value.to(dtype) if self.scale else None
        beta = self.beta.value.to(dtype) if self.center else None
        if training and self.trainable:
            outputs, mean, variance = _batch_norm_training(
                channels_first, gamma, beta, self.epsilon, self.unbiased_moving_variance)
            if in_stateless_scope():  # (stateless_call) Keras collects the new values
                for moving, batch in ((self.moving_mean, mean),
                                      (self.moving_variance, variance)):
                    moving.assign(moving.value * self.momentum + batch * (1.0 - self.momentum))
            else:
                # The same update in place, two kernels a statistic, instead of
                # Variable.assign and the four ops around it in Python.
                with torch.no_grad():
                    self.moving_mean.value.mul_(self.momentum).add_(
                        mean, alpha=1.0 - self.momentum)
                    self.moving_variance.value.mul_(self.momentum).add_(
                        variance, alpha=1.0 - self.momentum)
        else:
            outputs = torch.nn.functional.batch_norm(
                channels_first, self.moving_mean.value.to(dtype),
                self.moving_variance.value.to(dtype), gamma, beta, training=False,
                eps=self.epsilon)
        return outputs.permute(0, 2, 3, 1).to(_torch_dtype(self.compute_dtype))


def _batch_norm_training(inputs, gamma, beta, epsilon, unbiased=False):
    """Batch normalisation of a channels-last NCHW tensor with its batch
    statistics: (outputs, mean, variance), the variance without Bessel's
    correction as Keras's moments (with it if `unbiased`, as PyTorch's running
    variance takes it), the statistics in float32 (or wider)."""
    import torch

    channels = inputs.shape[1]
    count = inputs.numel() // channels
    repeats = _column_repeats(channels, count, inputs.dtype) if inputs.device.type == "cpu" else 0
    if repeats:
        outputs, mean, variance = _column_batch_norm().apply(inputs, gamma, beta, epsilon, repeats)
        return outputs, mean, variance * (count / (count - 1)) if unbiased else variance
    # The fused kernel hands out the batch statistics through running buffers
    # with momentum 1 (the variance with Bessel's correction, undone here).
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    mean = torch.zeros(channels, dtype=dtype, device=inputs.device)
    variance = torch.ones(channels, dtype=dtype, device=inputs.device)
    outputs = torch.nn.functional.batch_norm(inputs, mean, variance, gamma, beta, training=True,
                                             momentum=1.0, eps=epsilon)
    return outputs, mean, variance if unbiased else variance * ((count - 1) / count)


def _column_repeats(channels, count, dtype):
    """How many pixels a row of `_column_batch_norm`'s column view holds, or 0 where
    PyTorch's channels-last kernel is the faster on a CPU: everywhere but bf16 with
    channels that are not a multiple of 16 (measured: reports/throughput_notes.md)."""
    import torch

    if dtype != torch.bfloat16 or channels % 16 == 0 or (channels >= 64 and count < 16384):
        return 0
    for repeats in range(1, 129):
        if (repeats * channels) % 32 == 0 and repeats * channels >= 256 and count % repeats == 0:
            return repeats
    return 0


@functools.cache
def _column_batch_norm():
    """Training-mode batch normalisation of a channels-last tensor on its column view:
    its (pixels, channels) memory read as rows of `repeats` pixels, so that PyTorch's
    bf16 kernels run where they are fast (channels a multiple of 32). The column
    statistics fold into each channel's exactly (equal groups: the mean of the means;
    the mean of the variances plus the variance of the means); the backward pass is
    the inference kernel with each channel's statistics repeated, plus one affine
    pass for the statistics' share of the input gradient. Built on first use, since
    torch is imported on the PyTorch backend only."""
    import torch

    aten = torch.ops.aten

    def columns(tensor, repeats):
        # NCHW in channels-last memory -> (pixels / repeats, repeats * channels)
        return tensor.permute(0, 2, 3, 1).reshape(-1, repeats * tensor.shape[1])

    def tiled(vector, repeats):
        return None if vector is None else vector.repeat(repeats)

    class ColumnBatchNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta, epsilon, repeats):
            wide = columns(x, repeats)
            channels = x.shape[1]
            dtype = torch.promote_types(x.dtype, torch.float32)
            # float32 running buffers make the kernel compute the statistics in float32.
            column_mean, column_variance = torch.batch_norm_update_stats(
                wide, torch.zeros(wide.shape[1], dtype=dtype, device=x.device),
                torch.ones(wide.shape[1], dtype=dtype, device=x.device), 1.0)
            means = column_mean.view(repeats, channels)
            mean = means.mean(0)
            variance = column_variance.view(repeats, channels).mean(0) + means.var(0, correction=0)
            # Written into a channels-last tensor of its own (not a view of the
            # column view), which a following ReLU may overwrite (_writable).
            outputs = torch.empty_like(x, memory_format=torch.channels_last)
            aten.native_batch_norm.out(
                wide, tiled(gamma, repeats), tiled(beta, repeats), tiled(mean, repeats),
                tiled(variance, repeats), False, 0.0, epsilon, out=columns(outputs, repeats),
                save_mean=mean.new_empty(0), save_invstd=mean.new_empty(0))
            ctx.save_for_backward(x, gamma, mean, variance)
            ctx.epsilon, ctx.repeats = epsilon, repeats
            ctx.mark_non_differentiable(mean, variance)
            return outputs, mean, variance

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad, _mean_grad, _variance_grad):
            x, gamma, mean, variance = ctx.saved_tensors
            epsilon, repeats = ctx.epsilon, ctx.repeats
            batch, channels, height, width = x.shape
            count = x.numel() // channels
            if gamma is None:
                gamma = torch.ones_like(mean)
            wide, wide_mean = columns(x, repeats), tiled(mean, repeats)
            # One pass: grad * gamma * invstd, and per column the sums of grad * x_hat
            # and of grad (x_hat = (x - mean) * invstd).
            grad_x, column_dot, column_sum = aten.native_batch_norm_backward(
                columns(grad, repeats), wide, tiled(gamma, repeats), wide_mean,
                tiled(variance, repeats), None, None, False, epsilon, [True, True, True])
            dot = column_dot.view(repeats, channels).sum(0)
            total = column_sum.view(repeats, channels).sum(0)
            # The batch statistics' share, -gamma * invstd * (total + x_hat * dot) / count,
            # is affine in x: the inference kernel with mean `mean` and variance 1.
            invstd = torch.rsqrt(variance + epsilon)
            slope = gamma * invstd * invstd * dot / -count
            offset = gamma * invstd * total / -count
            grad_x += aten.native_batch_norm(
                wide, tiled(slope, repeats), tiled(offset, repeats), wide_mean,
                torch.ones_like(wide_mean), False, 0.0, 0.0)[0]
            return (grad_x.view(batch, height, width, channels).permute(0, 3, 1, 2),
                    dot if ctx.needs_input_grad[1] else None,
                    total if ctx.needs_input_grad[2] else None, None, None)

    return ColumnBatchNorm


@keras.saving.register_keras_serializable(package="cifar_repro")
class Dropout(layers.Dropout):
    """Keras's Dropout; on the PyTorch backend on a CPU its mask comes from NumPy's
    SFC64 generator, seeded by the layer's SeedGenerator (so a resumed run draws the
    same masks), instead of PyTorch's slow CPU `bernoulli_`. Each unit is dropped with
    probability round(rate * 2**32) / 2**32 and the kept ones scaled by 1 / (1 - rate),
    as Keras's dropout does; elsewhere (a GPU, a noise_shape) it is Keras's."""

    def call(self, inputs, training=False):
        if not (training and 0.0 < self.rate < 1.0 and self.noise_shape is None
                and _use_torch()):
            return super().call(inputs, training=training)
        inputs = _as_tensor(inputs)
        if inputs.device.type != "cpu" or not inputs.dtype.is_floating_point:
            return super().call(inputs, training=training)
        import numpy as np
        import torch

        seed = [int(value) & 0xFFFFFFFF for value in self.seed_generator.next().tolist()]
        words = np.random.SFC64(np.random.SeedSequence(seed)).random_raw(
            (inputs.numel() + 1) // 2)
        # 32 uniform bits an element, read as int32: uniform over [-2**31, 2**31),
        # so a unit is kept where its bits reach the threshold below.
        bits = torch.from_numpy(words.view(np.int32)[:inputs.numel()]).view(inputs.shape)
        threshold = round(self.rate * 2**32) - 2**31
        mask = (bits >= threshold).to(inputs.dtype).mul_(1.0 / (1.0 - self.rate))
        return inputs * mask
