"""A PyTorch module that computes what a suite network computes.

`TorchPort(keras_model)` walks the functional graph and builds one torch layer
per Keras layer (Conv2d, BatchNorm2d, Linear, ...), with PyTorch's own kernels,
so a benchmark can time the same network on both frameworks. The parameter
count is the Keras model's, and `copy_weights` loads the Keras weights so that
the two give the same logits (tested), which pins down padding, strides and
layer order. Used by benchmarks/throughput.py; needs torch (requirements-bench.txt).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _same_padding(size, kernel, stride):
    """Keras/TensorFlow "same": the total padding, more of it at the bottom/right."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class KerasConv(nn.Module):
    """Conv2d (grouped for DepthwiseConv2D) with Keras's padding semantics; `padding`
    is that of a ZeroPadding2D the convolution takes over (`_conv_padding`)."""

    def __init__(self, layer, depthwise=False, padding=0):
        super().__init__()
        kernel = layer.kernel_size
        channels_in = layer.input.shape[-1]
        channels_out = channels_in * layer.depth_multiplier if depthwise else layer.filters
        self.pad = None
        if layer.padding == "same":
            height, width = layer.input.shape[1:3]
            top, bottom = _same_padding(height, kernel[0], layer.strides[0])
            left, right = _same_padding(width, kernel[1], layer.strides[1])
            if top == bottom and left == right:  # as PyTorch code writes it: Conv2d(padding=1)
                padding = (top, left)
            else:  # Keras's extra bottom/right pixel: Conv2d's padding is symmetric
                self.pad = (left, right, top, bottom)
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=layer.strides,
                              padding=padding, groups=channels_in if depthwise else 1,
                              bias=layer.use_bias)
        self.activation = getattr(layer.activation, "__name__", "linear")
        if self.activation not in ("linear", "relu"):
            raise ValueError(f"{layer.name}: unsupported activation {self.activation!r}")

    def forward(self, x):
        if self.pad and any(self.pad):
            x = F.pad(x, self.pad)
        x = self.conv(x)
        return F.relu(x) if self.activation == "relu" else x


class Pad(nn.Module):
    def __init__(self, padding):
        super().__init__()
        (top, bottom), (left, right) = padding
        self.pad = (left, right, top, bottom)

    def forward(self, x):
        return F.pad(x, self.pad)


class SubsamplePad(nn.Module):
    """He et al.'s option-A shortcut (models.layers.SubsampleChannelPad)."""

    def __init__(self, layer):
        super().__init__()
        self.strides = layer.strides
        self.pad = (0, 0, 0, 0, layer.channels_before, layer.channels_after)

    def forward(self, x):
        return F.pad(x[:, :, ::self.strides, ::self.strides], self.pad)


class GlobalPool(nn.Module):
    def __init__(self, keepdims):
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


class Activation(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.function = {"sigmoid": torch.sigmoid, "relu": F.relu, "linear": lambda x: x}[name]

    def forward(self, x):
        return self.function(x)


def _conv_padding(pad, layer):
    """(rows, columns) where ZeroPadding2D `pad` feeds only `layer`, a "valid"
    convolution, symmetrically: PyTorch code writes that as Conv2d(padding=1)
    (papers 000-003's strided convolutions), not as a separate F.pad."""
    readers = [node.operation for node in pad._outbound_nodes]
    if (type(pad).__name__ != "ZeroPadding2D" or readers != [layer]
            or type(layer).__name__ not in ("Conv2D", "DepthwiseConv2D")
            or layer.padding != "valid"):
        return None
    (top, bottom), (left, right) = pad.padding
    return (top, left) if top == bottom and left == right else None


def _torch_layer(layer, padding=0):
    kind = type(layer).__name__
    if kind == "Conv2D":
        return KerasConv(layer, padding=padding)
    if kind == "DepthwiseConv2D":
        return KerasConv(layer, depthwise=True, padding=padding)
    if kind == "BatchNormalization":
        # Keras momentum m keeps m of the old average; PyTorch's momentum is the new share.
        norm = nn.BatchNorm2d if len(layer.input.shape) == 4 else nn.BatchNorm1d
        return norm(layer.input.shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum)
    if kind == "ReLU":
        if layer.max_value is not None or layer.negative_slope or layer.threshold:
            raise ValueError(f"{layer.name}: only a plain ReLU is ported")
        return nn.ReLU()
    if kind == "Activation":
        return Activation(layer.activation.__name__)
    if kind == "Dense":
        linear = nn.Linear(layer.input.shape[-1], layer.units, bias=layer.use_bias)
        activation = layer.activation.__name__
        return linear if activation == "linear" else nn.Sequential(linear, Activation(activation))
    if kind == "Dropout":
        return nn.Dropout(layer.rate)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        if layer.padding != "valid":
            raise ValueError(f"{layer.name}: only valid pooling is ported")
        pool = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
        return pool(layer.pool_size, layer.strides)
    if kind == "ZeroPadding2D":
        return Pad(layer.padding)
    if kind == "GlobalAveragePooling2D":
        return GlobalPool(layer.keepdims)
    if kind == "SubsampleChannelPad":
        return SubsamplePad(layer)
    if kind in ("Add", "Multiply", "Flatten"):
        return None  # merged in forward
    raise ValueError(f"{layer.name}: no PyTorch port for {kind}")


class TorchPort(nn.Module):
    """The Keras functional model `model` as a torch module on NCHW images."""

    def __init__(self, model):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.graph = []  # (name, kind, input names) in topological order
        self.input_name = model.layers[0].name
        for layer in model.layers[1:]:
            parent_layers = [t._keras_history.operation
                             for t in layer._inbound_nodes[0].input_tensors]
            if any(_conv_padding(layer, reader.operation) for reader in layer._outbound_nodes):
                continue  # the convolution pads
            padding = (_conv_padding(parent_layers[0], layer) or 0) if parent_layers else 0
            if padding:  # read what the padding read
                parent_layers = [t._keras_history.operation
                                 for t in parent_layers[0]._inbound_nodes[0].input_tensors]
            parents = [parent.name for parent in parent_layers]
            module = _torch_layer(layer, padding)
            if module is not None:
                self.layers[layer.name] = module
            self.graph.append((layer.name, type(layer).__name__, parents))
        self.output_name = self.graph[-1][0]
        # Residual Adds accumulate into an operand only they read, as the papers'
        # PyTorch blocks write it (`out = self.bn2(...); out += self.shortcut(x)`).
        readers = {}
        for _, _, parents in self.graph:
            for parent in parents:
                readers[parent] = readers.get(parent, 0) + 1
        kinds = {name: kind for name, kind, _ in self.graph}

        def fresh(name):
            module = self.layers[name] if name in self.layers else None
            return readers[name] == 1 and (
                kinds.get(name) in ("BatchNormalization", "Add")
                or isinstance(module, KerasConv) and module.activation == "linear")

        self.accumulate = {name: next(k for k, parent in enumerate(parents) if fresh(parent))
                           for name, kind, parents in self.graph
                           if kind == "Add" and len(parents) == 2 and any(map(fresh, parents))}

    def forward(self, images):
        values = {self.input_name: images}
        for name, kind, parents in self.graph:
            inputs = [values[parent] for parent in parents]
            if name in self.accumulate:
                target = self.accumulate[name]
                out = inputs[target]
                out += inputs[1 - target]
            elif kind == "Add":
                out = inputs[0]
                for other in inputs[1:]:
                    out = out + other
            elif kind == "Multiply":
                out = inputs[0] * inputs[1]
            elif kind == "Flatten":
                # Keras flattens NHWC; permute so the following Linear sees the same order.
                out = inputs[0].permute(0, 2, 3, 1).flatten(1)
            else:
                out = self.layers[name](inputs[0])
            values[name] = out
        return values[self.output_name]


def torch_layout(kind, kernel):
    """A Keras kernel in the twin's layout: Conv2D HWIO -> OIHW, DepthwiseConv2D
    H W C M -> (C*M) 1 H W, Dense (in, out) -> (out, in); others as they are."""
    if kind == "Conv2D":
        return kernel.transpose(3, 2, 0, 1)
    if kind == "DepthwiseConv2D":
        h, w, c, m = kernel.shape
        return kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w)
    return kernel.T if kind == "Dense" else kernel


def keras_state(model, read, trainable_only=False):
    """{(layer, Keras weight name): read(weight)} of `model`'s weights, kernels in the
    twin's layout: the keys `named_state` gives the twin's."""
    return {(layer.name, weight.name): torch_layout(
                type(layer).__name__ if weight.name == "kernel" else None, read(weight))
            for layer in model.layers for weight in layer.weights
            if weight.trainable or not trainable_only}


_KERAS_NAMES = {"weight": "kernel", "bias": "bias"}
_NORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


def named_state(port, statistics=False):
    """{(layer, Keras weight name): tensor} of the port's parameters, and with
    `statistics` its BatchNorms' running mean and variance too."""
    found = {}
    for layer_name, module in port.layers.items():
        norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        names = _NORM_NAMES if norm else _KERAS_NAMES
        entries = list(module.named_parameters())
        if statistics and norm:
            entries += [(name, module.get_buffer(name)) for name in ("running_mean", "running_var")]
        for name, tensor in entries:
            found[(layer_name, names[name.rsplit(".", 1)[-1]])] = tensor
    return found


def copy_weights(port, model):
    """Loads `model`'s weights (NHWC kernels) into `port`."""
    with torch.no_grad():
        for layer in model.layers:
            if layer.name not in port.layers:
                continue
            target = port.layers[layer.name]
            kind = type(layer).__name__
            weights = [np.asarray(w) for w in layer.get_weights()]
            if kind in ("Conv2D", "DepthwiseConv2D"):
                kernel = np.ascontiguousarray(torch_layout(kind, weights[0]))
                target.conv.weight.copy_(torch.from_numpy(kernel))
                if layer.use_bias:
                    target.conv.bias.copy_(torch.from_numpy(weights[1]))
            elif kind == "BatchNormalization":
                gamma, beta, mean, variance = weights
                target.weight.copy_(torch.from_numpy(gamma))
                target.bias.copy_(torch.from_numpy(beta))
                target.running_mean.copy_(torch.from_numpy(mean))
                target.running_var.copy_(torch.from_numpy(variance))
            elif kind == "Dense":
                linear = target[0] if isinstance(target, nn.Sequential) else target
                linear.weight.copy_(torch.from_numpy(torch_layout(kind, weights[0]).copy()))
                if layer.use_bias:
                    linear.bias.copy_(torch.from_numpy(weights[1]))
    return port


def parameter_count(port):
    return sum(p.numel() for p in port.parameters() if p.requires_grad)


def l2_groups(port, model):
    """torch.optim parameter groups that reproduce Keras per-layer L2 regularisers
    (l2 * sum(w**2) in the loss is coupled weight decay 2 * l2 on that kernel)."""
    decayed, rest = {}, []
    for layer in model.layers:
        regularizer = getattr(layer, "kernel_regularizer", None)
        if regularizer is not None and layer.name in port.layers:
            module = port.layers[layer.name]
            if isinstance(module, nn.Sequential):
                module = module[0]
            weight = module.conv.weight if hasattr(module, "conv") else module.weight
            decayed.setdefault(2 * float(regularizer.l2), []).append(weight)
    seen = {id(p) for group in decayed.values() for p in group}
    rest = [p for p in port.parameters() if id(p) not in seen]
    return [{"params": rest}] + [{"params": ps, "weight_decay": wd} for wd, ps in decayed.items()]
