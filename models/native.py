"""Conv2D, DepthwiseConv2D and BatchNormalization that, on the PyTorch backend,
call PyTorch's channels-last kernels directly; on TensorFlow and JAX they are
Keras's layers unchanged.

Why: Keras 3.15's PyTorch backend copies every NHWC activation into a
contiguous NCHW tensor and then into channels-last memory before each
convolution (and back in the backward pass), and computes BatchNorm from
separate mean/square/subtract/multiply ops. An NHWC tensor permuted to NCHW
*is* a channels-last tensor, so oneDNN can take it as it is, and
`torch.nn.functional.batch_norm` does the normalisation in one fused kernel
with its own backward; a convolution adds its bias itself instead of in a
second pass. Measured on a 2-core CPU (ResNet-20 training, batch 128,
benchmarks/throughput.py): the copies and the unfused BatchNorm were about
a quarter of the step. In bf16, a strided depthwise convolution's input
gradient is computed in float32, where oneDNN's bf16 kernel for it is 25-150x
slower, and a bf16 BatchNorm whose channels are not a multiple of 16 runs
PyTorch's kernels on a wider view of the same memory, where they are fast.

The layers compute the same function with the same variables, and save and
load as these classes (`cifar_repro>Conv2D`, ...); tests/test_models.py
compares them with Keras's own implementation on the PyTorch backend.
Cases the shortcut does not cover (unknown spatial sizes; masks; renorm;
synchronized statistics; channels-first data) go through Keras's implementation.
"""

import functools
import weakref

import keras
from keras import layers, ops, tree
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
    """A torch tensor as it is (ops.convert_to_tensor's dispatch costs ~5 us a
    call, three times a layer); anything else through Keras."""
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
    pass (brgconv_strided) takes 25-150x its float32 time on a CPU without
    AMX: 115 ms against 4.4 for MobileNetV2's 128x168x32x32 stride-2 layer,
    99 ms against 0.7 for its 672-channel one (2-core AVX-512 CPU, PyTorch
    2.13, batch 128). With the casts (the output gradient and the kernel to
    float32, the input gradient back) the layer's input gradient takes 8.6 ms
    against 121, and 1.3 ms against 104. The forward pass and the kernel's
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
        # costs ~15 us a call in Python).
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
                # The same update in place, two kernels a statistic: Variable.assign
                # and the four ops around it cost ~50 us a layer in Python, about
                # 1 ms of a ResNet-20 step (19 BatchNorms).
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
    """How many pixels a row of the column view of `_column_batch_norm` holds
    (`count` pixels in all), or 0 where PyTorch's channels-last kernel is the
    faster on a CPU. That is everywhere but bf16 with channels not a multiple
    of 16: 16, 32, 112 and 176 channels were measured faster on PyTorch's
    kernel, and so was float32. Of the others, the column view pays for its
    dozen small extra ops (~0.15 ms) where there are few channels (3 channels
    at batch 128 over 32x32 pixels: 0.6 against 5.5 ms) or many pixels (168
    channels over 16x16: 4.0 against 4.9 ms), not for 232 channels over 8x8
    (1.5 ms both ways) or 268 over 4x4 (0.6 against 0.45 ms)."""
    import torch

    if dtype != torch.bfloat16 or channels % 16 == 0 or (channels >= 64 and count < 16384):
        return 0
    for repeats in range(1, 129):
        if (repeats * channels) % 32 == 0 and repeats * channels >= 256 and count % repeats == 0:
            return repeats
    return 0


@functools.cache
def _column_batch_norm():
    """Training-mode batch normalisation of a channels-last tensor computed on
    its column view: the (pixels, channels) matrix that its memory is, read as
    rows of `repeats` pixels (repeats * channels columns, a multiple of 32).

    Why: PyTorch's channels-last kernel vectorises over the channels, and in
    bf16 on a CPU it slows down where they are not a multiple of 16. On a
    2-core AVX-512 CPU (batch 128; forward and backward) 24 channels over
    32x32 pixels took 5.8 ms (2.5 on the column view), and in MobileNetV2's
    bf16 training step its three 168-channel 32x32 BatchNorms took 59 ms (51),
    its three 24-channel ones 17 ms (7). Over the wide columns the same
    kernels run in their fast case: the column statistics come from
    `batch_norm_update_stats` and fold into each channel's exactly (equal
    groups: the mean of the means; the mean of the variances plus the variance
    of the means); the normalisation and the backward pass are the inference
    kernels with each channel's statistics repeated across its columns, plus one
    affine pass for the batch statistics' share of the input gradient. Where
    the channels are a multiple of 16 (16, 32, 112, 176 measured), and in
    float32, PyTorch's kernel is as fast or faster, and is used. Built on first
    use, since torch is only imported on the PyTorch backend.
    """
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
    """Keras's Dropout; on the PyTorch backend on a CPU, its mask is drawn
    from NumPy's SFC64 generator, seeded by the layer's SeedGenerator.

    Why: PyTorch's CPU `bernoulli_`, which both Keras's torch backend and
    `nn.Dropout` use, takes about 6 ns an element; SFC64 fills 32 random bits
    an element in under 1 ns, and the comparison that turns them into the mask
    runs on PyTorch's threads. Measured on a 2-core CPU, a 128x32x32x64
    dropout forward and backward took 19 ms against 59 ms with
    `torch.nn.functional.dropout`: about a tenth of resnet_deep's training
    step (nine dropout layers). Every unit is dropped with probability
    round(rate * 2**32) / 2**32 (off `rate` by less than 1e-9), independently,
    and the kept ones are scaled by 1 / (1 - rate), as Keras's dropout does.
    The same seed gives the same masks (Keras's unseeded torch path does not).
    Elsewhere (other backends, a GPU, a noise_shape) it is Keras's dropout.
    """

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


# Keras layers whose __call__ adds nothing to call() for the tensors met inside
# a network but dtype handling (which _with_dtypes does): no masks or sublayers.
# A layer of the suite's own opts in with a class attribute `direct_call = True`.
_DIRECT_LAYERS = (layers.Conv2D, layers.DepthwiseConv2D, layers.BatchNormalization, layers.ReLU,
                  layers.Activation, layers.Add, layers.Multiply, layers.ZeroPadding2D,
                  layers.Dense, layers.GlobalAveragePooling2D, layers.MaxPooling2D,
                  layers.AveragePooling2D, layers.Flatten, layers.Dropout)


def _callable_directly(operation):
    """Whether Layer.__call__ adds nothing to `operation.call` but dtype handling."""
    return ((isinstance(operation, _DIRECT_LAYERS) or getattr(operation, "direct_call", False))
            and operation.activity_regularizer is None
            and getattr(operation, "quantization_mode", None) is None)


def _direct_call(operation, training):
    """`operation.call` with the training flag where it takes one, or None where
    the layer needs Keras's full __call__."""
    if not _callable_directly(operation):
        return None
    return _with_training(operation.call, operation, training)


_NO_SCOPE = object()  # no autocast scope open (a float32 model's __call__)

# Each Network's execution plans on the PyTorch backend, {(training, autocast
# dtype): plan}, kept outside the model so that copying or saving a model never
# carries a plan whose tensor ids belong to another graph.
_PLANS = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="cifar_repro")
class Network(keras.Model):
    """A functional model (`Network(inputs, outputs, name=...)`, as `keras.Model`)
    that, on the PyTorch backend, runs its graph calling each plain layer's
    `call` directly.

    Why: Keras's Layer.__call__ costs about 0.2 ms a layer on the PyTorch
    backend (dtype and structure checks, call-context bookkeeping, torch
    module hooks): 21 ms of a batch-1 ResNet-20 forward against 8 ms without
    it, and about 15% of a 128-image inference. Only layers for which
    __call__ adds nothing but dtype handling are called directly (see
    `_DIRECT_LAYERS`), with that dtype handling (input casts, autocast scopes)
    done as __call__ does it; other layers keep their __call__, and masks and
    calls without an explicit training flag go through Keras's Functional.call
    unchanged. In the plan a ZeroPadding2D that only feeds a "valid"
    convolution is that convolution's own padding (`_padding_folds`), a ReLU
    or a residual Add writes over an activation no other layer reads
    (`_relu_in_place`, `_add_in_place`), and in
    inference each BatchNormalization that only reads a convolution is
    folded into it (`_folded_batch_norm`). On
    TensorFlow and JAX the graph is traced and compiled, so it is Keras's
    model as is.
    """

    def call(self, inputs, training=None, mask=None, **kwargs):
        if not (_use_torch() and isinstance(training, bool) and mask is None and not kwargs):
            return super().call(inputs, training=training, mask=mask, **kwargs)
        # The autocast scope that Model.__call__ opened (mixed precision) decides
        # which scope, if any, each layer's own __call__ would open.
        scope = keras_backend.get_autocast_scope()
        key = (training, None if scope is None else scope.dtype)
        plans = _PLANS.setdefault(self, {})
        if key not in plans:
            plans[key] = self._torch_plan(training, key[1] if scope is not None else _NO_SCOPE)
        tensors = dict(zip(self._input_ids, tree.flatten(self._standardize_inputs(inputs))))
        for call, single, bind, outputs, release in plans[key]:
            if single is not None:
                result = call(tensors[single])
            else:
                args, kwargs = bind(tensors)
                result = call(*args, **kwargs)
            if len(outputs) == 1 and not isinstance(result, (list, tuple, dict)):
                tensors[outputs[0]] = result
            else:
                tensors.update(zip(outputs, tree.flatten(result)))
            for released in release:
                del tensors[released]
        outputs = tree.pack_sequence_as(self._outputs_struct,
                                        [tensors[id(x)] for x in self.outputs])
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            return outputs[0]
        return outputs

    def _torch_plan(self, training, scope_dtype=_NO_SCOPE):
        """The graph as a list of steps, in Functional's order, each step
        (callable, id of its single input tensor or None, a function from the
        computed tensors to its (args, kwargs), ids of its outputs, ids of the
        tensors no later step reads).

        Why a plan rather than Functional's walk: the walk re-derives the
        order and argument mapping on every call (about 6 ms of a ResNet-20
        forward), and keeps every activation alive until the call returns;
        releasing each one after its last reader lets PyTorch's allocator hand
        the same, cache-warm memory to the next layer during inference (in
        training autograd keeps what the backward pass needs either way)."""
        computed = {id(x) for x in self.inputs}
        nodes = []
        for depth in sorted(self._nodes_by_depth, reverse=True):
            for node in self._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in computed for x in node.input_tensors):
                    continue  # not connected to the inputs, as Functional skips it
                nodes.append(node)
                computed.update(id(x) for x in node.outputs)
        kept = {id(x) for x in self.outputs}
        producers = {id(x): index for index, node in enumerate(nodes) for x in node.outputs}
        readers = {}
        for index, node in enumerate(nodes):
            for x in node.input_tensors:
                readers.setdefault(id(x), []).append(index)

        def sole_reader(tensor, index):
            """The producing node of `tensor` where node `index` is its only reader."""
            key = id(tensor)
            if key in kept or readers.get(key) != [index] or key not in producers:
                return None
            return nodes[producers[key]]

        # A ZeroPadding2D that only feeds a "valid" convolution becomes that
        # convolution's own padding. Inference: a BatchNormalization that only
        # reads a convolution runs inside it (_folded_batch_norm). Training and
        # inference: a ReLU, or a two-way Add, that is the only reader of a
        # fresh activation writes its result over it.
        pads = self._padding_folds(nodes, sole_reader)
        folds = {} if training else self._batch_norm_folds(nodes, sole_reader)
        folded = set(folds.values()) | set(pads.values())
        steps = []  # (callable, single input id, binder, output ids, input ids)
        for index, node in enumerate(nodes):
            if index in folded:
                continue  # computed by its convolution's step
            operation = self._get_operation_for_node(node)
            inputs, outputs = node.input_tensors, node.outputs
            single = node.arguments._single_positional_tensor
            pad = None
            if index in pads:  # the convolution reads what the padding read
                pad_node = nodes[pads[index]]
                pad = self._get_operation_for_node(pad_node)
                inputs = pad_node.input_tensors
                single = pad_node.arguments._single_positional_tensor
            if index in folds:
                norm_node = nodes[folds[index]]
                call = _with_dtypes(operation, _folded_batch_norm(
                    operation, self._get_operation_for_node(norm_node), pad), scope_dtype)
                outputs = norm_node.outputs
            elif pad is not None:
                call = _with_dtypes(operation, _padded_conv(operation, pad), scope_dtype)
            elif (_plain_relu(operation) and len(node.input_tensors) == 1
                  and _fresh_output(sole_reader(node.input_tensors[0], index))):
                call = _with_dtypes(operation, _relu_in_place(operation), scope_dtype)
            elif _plain_add(operation, node) and any(
                    _fresh_output(sole_reader(x, index)) for x in node.input_tensors):
                target = next(k for k, x in enumerate(node.input_tensors)
                              if _fresh_output(sole_reader(x, index)))
                call = _with_dtypes(operation, _add_in_place(operation, target), scope_dtype)
            else:
                call = _direct_call(operation, training)
                if call is None:
                    call = _with_training(operation, operation, training)
                else:
                    call = _with_dtypes(operation, call, scope_dtype)
            steps.append((call, None if single is None else id(single), _binder(node.arguments),
                          tuple(id(x) for x in outputs), [id(x) for x in inputs]))
        last_reader = {key: index for index, step in enumerate(steps) for key in step[4]}
        return [(call, single, bind, outputs,
                 tuple({key for key in inputs if last_reader[key] == index and key not in kept}))
                for index, (call, single, bind, outputs, inputs) in enumerate(steps)]

    def _padding_folds(self, nodes, sole_reader):
        """{index of a "valid" convolution: index of the ZeroPadding2D that
        only it reads}, for the symmetric paddings the convolution can add
        itself (`_padded_conv`): papers 000-003's stride-2 convolutions, padded
        as PyTorch's Conv2d(padding=1) pads. Keras's ZeroPadding2D writes a
        padded copy of the activation (and the backward pass crops its
        gradient); PyTorch's convolution reads the zeros it needs."""
        folds = {}
        for index, node in enumerate(nodes):
            conv = self._get_operation_for_node(node)
            if not (isinstance(conv, (Conv2D, DepthwiseConv2D)) and conv.padding == "valid"
                    and conv.data_format == "channels_last" and _callable_directly(conv)
                    and len(node.input_tensors) == 1
                    and node.arguments._single_positional_tensor is not None):
                continue
            pad_node = sole_reader(node.input_tensors[0], index)
            if (pad_node is not None and len(pad_node.input_tensors) == 1
                    and pad_node.arguments._single_positional_tensor is not None
                    and _folded_padding(self._get_operation_for_node(pad_node), conv)):
                folds[index] = nodes.index(pad_node)
        return folds

    def _batch_norm_folds(self, nodes, sole_reader):
        """{index of a convolution: index of the BatchNormalization that is the
        only reader of its output}, for the pairs `_folded_batch_norm` can run
        as one convolution in inference."""
        folds = {}
        for index, node in enumerate(nodes):
            if len(node.input_tensors) != 1 or not _foldable_norm(
                    self._get_operation_for_node(node), node.input_tensors[0]):
                continue
            conv_node = sole_reader(node.input_tensors[0], index)
            if (conv_node is not None and len(conv_node.outputs) == 1
                    and conv_node.arguments._single_positional_tensor is not None
                    and _foldable_conv(self._get_operation_for_node(conv_node))
                    and conv_node.operation.compute_dtype == node.operation.compute_dtype):
                folds[nodes.index(conv_node)] = index
        return folds

    @property
    def _input_ids(self):
        return [id(x) for x in self.inputs]


def _with_dtypes(layer, call, scope_dtype):
    """`call` with what Layer.__call__ does about dtypes: floating inputs cast to
    the layer's input dtype, and the autocast scope (variables read in the
    compute dtype) that __call__ would open, given the scope open around the
    model (`scope_dtype`, or _NO_SCOPE). A float32 layer in a float32 model
    needs neither and gets `call` itself."""
    backend = keras_backend
    if scope_dtype is _NO_SCOPE:
        new_scope = (layer.compute_dtype if layer.compute_dtype != layer.variable_dtype
                     else _NO_SCOPE)
    elif not layer.autocast or not backend.is_float_dtype(layer.compute_dtype):
        new_scope = None
    elif scope_dtype != layer.compute_dtype:
        new_scope = layer.compute_dtype
    else:
        new_scope = _NO_SCOPE
    cast_to = (_torch_dtype(layer.input_dtype)
               if layer.autocast and layer._convert_input_args
               and backend.is_float_dtype(layer.input_dtype) else None)
    if new_scope is _NO_SCOPE and (cast_to is None or layer.input_dtype == "float32"
                                    and scope_dtype is _NO_SCOPE):
        return call  # float32 throughout: nothing to cast, no scope

    def cast(value):
        if isinstance(value, list):
            return [cast(item) for item in value]
        if (cast_to is not None and hasattr(value, "dtype") and value.dtype.is_floating_point
                and value.dtype != cast_to):
            return value.to(cast_to)
        return value

    def mixed_call(*args, **kwargs):
        args = [cast(value) for value in args]
        if new_scope is _NO_SCOPE:
            return call(*args, **kwargs)
        with backend.AutocastScope(new_scope):
            return call(*args, **kwargs)

    return mixed_call


def _folded_padding(pad, conv):
    """(rows, columns) of zeros on each side where ZeroPadding2D `pad` can be
    `conv`'s own padding, else None."""
    if not (isinstance(pad, layers.ZeroPadding2D) and _callable_directly(pad)
            and pad.data_format == "channels_last" and pad.compute_dtype == conv.compute_dtype):
        return None
    (top, bottom), (left, right) = pad.padding
    return (top, left) if top == bottom and left == right else None


def _padded_conv(conv, pad):
    """`conv(pad(x))` as one convolution that pads as it reads (see
    Network._padding_folds); the same sums, so the same values."""
    padding = _folded_padding(pad, conv)

    def call(inputs):
        if not _native_conv(conv, inputs):
            return conv.call(pad.call(inputs))
        return _native_conv_call(conv, inputs, padding)

    return call


def _float32_variables(layer):
    return layer.variable_dtype == "float32"


def _foldable_conv(layer):
    return (isinstance(layer, (Conv2D, DepthwiseConv2D)) and _float32_variables(layer)
            and _callable_directly(layer) and layer.data_format == "channels_last"
            and layer.activation in (None, keras.activations.linear))


def _foldable_norm(layer, inputs):
    return (isinstance(layer, BatchNormalization) and _float32_variables(layer)
            and _callable_directly(layer) and not layer.renorm
            and not layer.synchronized and len(inputs.shape) == 4 and layer.axis in (-1, 3))


def _folded_batch_norm(conv, norm, pad=None):
    """`norm(conv(x))` in inference as one convolution: the BatchNorm's scale
    folded into the kernel, its shift into the bias (as TensorRT, ONNX Runtime
    and torch.fx's fuser do for inference). Computes the same function; in
    float32 the rounding differs by about 1e-7 of the output's range. Under
    mixed precision the fold is computed from the float32 variables and cast
    to the compute dtype once, and the activation is rounded to bf16/fp16
    once (Keras rounds it after the convolution and again after the
    BatchNorm).

    Why: inference then makes one pass over each activation instead of two;
    eager PyTorch (and this suite in training) runs the BatchNorm separately.
    The folded weights are cached while no variable of the pair changes
    (torch counts in-place updates in each tensor's _version: an optimizer
    step, an assign, loading weights); with gradients enabled they are
    computed anew on each call, so gradients reach the variables. `pad`, a
    ZeroPadding2D that only feeds `conv`, is folded into it too."""
    import torch

    variables = list(conv.variables) + list(norm.variables)
    cache = {}

    def fold():
        inverse = torch.rsqrt(norm.moving_variance.value + norm.epsilon)
        scale = inverse * norm.gamma.value if norm.scale else inverse
        shift = -norm.moving_mean.value * scale
        if norm.center:
            shift = shift + norm.beta.value
        if conv.use_bias:
            shift = shift + conv.bias.value * scale
        kernel = conv.torch_kernel() * scale.reshape(-1, 1, 1, 1)
        dtype = _torch_dtype(conv.compute_dtype)
        return kernel.to(dtype).contiguous(), shift.to(dtype)

    def weights():
        # The variables as stored (float32), not as an autocast scope reads them.
        with keras_backend.AutocastScope(None):
            if torch.is_grad_enabled():
                return fold()
            tensors = [variable.value for variable in variables]
            key = [(id(tensor), tensor._version) for tensor in tensors]
            if cache.get("key") != key:
                # The tensors stay referenced with the key, so no id is reused.
                cache.update(key=key, tensors=tensors, weights=fold())
            return cache["weights"]

    padding = (0, 0) if pad is None else _folded_padding(pad, conv)

    def call(inputs):
        if not _native_conv(conv, inputs):
            padded = inputs if pad is None else pad.call(inputs)
            return norm.call(conv.call(padded), training=False)
        kernel, bias = weights()
        return _torch_conv2d(inputs, kernel, conv, _groups(conv), bias, padding)

    return call


def _plain_relu(layer):
    return (isinstance(layer, layers.ReLU) and _callable_directly(layer) and layer.max_value is None
            and not layer.negative_slope and not layer.threshold)


def _fresh_output(node):
    """Whether `node` (or None) writes its output into new memory that its own
    backward pass does not read: a view of another tensor must not be
    overwritten, nor an output autograd keeps (a convolution's activation).
    Autograd would refuse the backward pass otherwise; this keeps it from
    being tried."""
    if node is None:
        return False
    operation = node.operation
    if isinstance(operation, (layers.Conv2D, layers.DepthwiseConv2D)):
        return operation.activation in (None, keras.activations.linear)
    return isinstance(operation, (layers.BatchNormalization, layers.Add))


def _writable(inputs):
    """(the tensor to overwrite for `inputs`, whether `inputs` is its NHWC
    permutation), or None where overwriting would cost a copy.

    Under autograd an in-place op on a view makes the backward pass copy the
    whole gradient (CopySlices), and the native layers' outputs are views: an
    NHWC permutation of PyTorch's channels-last result. That result is
    overwritten then, and permuted again."""
    import torch

    base = inputs._base
    if base is None or not torch.is_grad_enabled():
        return inputs, False
    if base.dim() == 4:
        nhwc = base.permute(0, 2, 3, 1)
        if (nhwc.shape == inputs.shape and nhwc.stride() == inputs.stride()
                and nhwc.storage_offset() == inputs.storage_offset()):
            return base, True
    return None


def _relu_in_place(layer):
    """A ReLU that overwrites its input, which no other layer reads: the same
    values and gradients without a new activation (eager PyTorch code does
    this with nn.ReLU(inplace=True)); measured on the PyTorch port, about 1%
    of a ResNet-20 training step and 2% of ModifiedResNet's."""
    import torch

    def call(inputs):
        writable = _writable(inputs) if type(inputs) is torch.Tensor else None
        if writable is None:
            return layer.call(inputs)
        target, permuted = writable
        outputs = torch.relu_(target)
        return outputs.permute(0, 2, 3, 1) if permuted else outputs

    return call


def _plain_add(layer, node):
    return (type(layer) is layers.Add and _callable_directly(layer)
            and len(node.input_tensors) == 2)


def _add_in_place(layer, target):
    """A residual Add that accumulates into its input number `target`, a fresh
    activation no other layer reads (`out += shortcut` in the papers' PyTorch
    blocks): the same sums without a new activation."""
    import torch

    def call(inputs):
        first, second = inputs[target], inputs[1 - target]
        writable = (_writable(first) if type(first) is torch.Tensor
                    and type(second) is torch.Tensor and first.shape == second.shape
                    and first.dtype == second.dtype else None)
        if writable is None:
            return layer.call(inputs)
        tensor, permuted = writable
        tensor.add_(second.permute(0, 3, 1, 2) if permuted else second)
        return tensor.permute(0, 2, 3, 1) if permuted else tensor

    return call


def _binder(arguments):
    """tensors -> (args, kwargs) for a node's recorded arguments. The two shapes
    a functional CNN records, tensors as positional arguments (BatchNormalization
    also records mask=None) and one list of tensors (Add, Multiply), are bound
    by index; anything else goes through Keras's own fill_in, whose tree walks
    cost ~20 us a node."""
    args, kwargs = arguments.args, arguments.kwargs
    if not any(isinstance(value, keras.KerasTensor) for value in tree.flatten(kwargs)):
        if all(isinstance(value, keras.KerasTensor) for value in args):
            keys = [id(value) for value in args]
            return lambda tensors: ([tensors[key] for key in keys], kwargs)
        if (len(args) == 1 and isinstance(args[0], list)
                and all(isinstance(value, keras.KerasTensor) for value in args[0])):
            keys = [id(value) for value in args[0]]
            return lambda tensors: (([tensors[key] for key in keys],), kwargs)
    return arguments.fill_in


def _with_training(function, operation, training):
    """`function` (the operation's __call__ or call) with the model's training
    flag where the operation takes one: the model's flag wins, as in
    Functional.call."""
    if not getattr(operation, "_call_has_training_arg", False):
        return function

    def call(*args, **kwargs):
        kwargs["training"] = training
        return function(*args, **kwargs)

    return call
