"""The CIFAR ResNet family of papers 001, 002 and 003 and He et al. (2015).

All are kuangliu-style post-activation ResNets built from PyTorch-convention
layers (models/layers.py): a 3x3 stem, stages of basic or bottleneck blocks,
global average pooling and a linear head. The papers differ only in numbers
(stages, blocks, widths, strides), plus three switches: block type per stage
(001), one squeeze-and-excitation block after the stem (003), dropout (001's
row-1 notebook) and option-A shortcuts with He initialisation (He et al.).
"""

import keras
from keras import layers

from models import layers as tl
from models import native
from models.native_graph import Network
from models.registry import check_numbers, register

EXPANSION = {"basic": 1, "bottleneck": 4}


def squeeze_excite(x, reduction, *, name):
    """GAP -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid -> scale."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = tl.conv(s, channels // reduction, 1, name=f"{name}_reduce", use_bias=True)
    s = layers.ReLU(name=f"{name}_relu")(s)
    s = tl.conv(s, channels, 1, name=f"{name}_expand", use_bias=True)
    s = layers.Activation("sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_scale")([x, s])


def shortcut(x, out_channels, strides, kind, init, *, name):
    if strides == 1 and x.shape[-1] == out_channels:
        return x
    if kind == "option_a":
        extra = out_channels - x.shape[-1]
        return tl.SubsampleChannelPad(strides, extra // 2, extra - extra // 2,
                                      name=f"{name}_shortcut")(x)
    y = tl.conv(x, out_channels, 1, strides, name=f"{name}_shortcut_conv", init=init)
    return tl.batch_norm(y, name=f"{name}_shortcut_bn")


def basic_block(x, width, strides, *, name, dropout=0.0, shortcut_kind="projection", init=None):
    """conv3x3(stride) - BN - ReLU [- dropout] - conv3x3 - BN, + shortcut, ReLU."""
    y = tl.conv(x, width, 3, strides, name=f"{name}_conv1", init=init)
    y = tl.batch_norm(y, name=f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    if dropout:
        y = native.Dropout(dropout, name=f"{name}_drop")(y)
    y = tl.conv(y, width, 3, name=f"{name}_conv2", init=init)
    y = tl.batch_norm(y, name=f"{name}_bn2")
    y = layers.Add(name=f"{name}_add")([y, shortcut(x, width, strides, shortcut_kind, init, name=name)])
    return layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, width, strides, *, name, dropout=0.0, shortcut_kind="projection", init=None):
    """1x1 - BN - ReLU - 3x3(stride) - BN - ReLU - 1x1 (4x width) - BN, + shortcut, ReLU."""
    y = tl.conv(x, width, 1, name=f"{name}_conv1", init=init)
    y = tl.batch_norm(y, name=f"{name}_bn1")
    y = layers.ReLU(name=f"{name}_relu1")(y)
    if dropout:
        y = native.Dropout(dropout, name=f"{name}_drop")(y)
    y = tl.conv(y, width, 3, strides, name=f"{name}_conv2", init=init)
    y = tl.batch_norm(y, name=f"{name}_bn2")
    y = layers.ReLU(name=f"{name}_relu2")(y)
    y = tl.conv(y, 4 * width, 1, name=f"{name}_conv3", init=init)
    y = tl.batch_norm(y, name=f"{name}_bn3")
    out = shortcut(x, 4 * width, strides, shortcut_kind, init, name=name)
    y = layers.Add(name=f"{name}_add")([y, out])
    return layers.ReLU(name=f"{name}_out")(y)


BLOCKS = {"basic": basic_block, "bottleneck": bottleneck_block}


def cifar_resnet(
    num_classes=10, *, blocks, widths, strides=None, block_types="basic",
    stem_width=None, dropout=0.0, se_reduction=None, shortcut_kind="projection",
    init=None, name="cifar_resnet",
):
    """blocks/widths/strides: one entry per stage; block_types: one type for all
    stages or one per stage; dropout: after the stem ReLU and after the first
    ReLU of every block (paper 001's row-1 notebook)."""
    check_numbers("blocks", blocks, minimum=1, whole=True)
    check_numbers("widths", widths, minimum=1, whole=True)
    check_numbers("dropout", dropout, minimum=0, below=1)
    stages = len(blocks)
    if isinstance(block_types, str):
        block_types = (block_types,) * stages
    strides = strides or (1,) + (2,) * (stages - 1)
    if not len(widths) == len(strides) == len(block_types) == stages:
        raise ValueError(
            f"blocks, widths, strides and block_types need one entry per stage; got "
            f"{blocks}, {widths}, {strides}, {block_types}."
        )
    check_numbers("strides", strides, choices=(1, 2))
    unknown = set(block_types) - set(BLOCKS)
    if unknown:
        raise ValueError(f"Unknown block type(s) {sorted(unknown)}; expected {sorted(BLOCKS)}.")
    inputs = keras.Input((32, 32, 3), name="image")
    x = tl.conv(inputs, stem_width or widths[0], 3, name="stem_conv", init=init)
    x = tl.batch_norm(x, name="stem_bn")
    x = layers.ReLU(name="stem_relu")(x)
    if dropout:
        x = native.Dropout(dropout, name="stem_drop")(x)
    if se_reduction:
        x = squeeze_excite(x, se_reduction, name="stem_se")
    for stage, (count, width, stride, kind) in enumerate(zip(blocks, widths, strides, block_types)):
        for index in range(count):
            x = BLOCKS[kind](
                x, width, stride if index == 0 else 1, name=f"stage{stage + 1}_block{index + 1}",
                dropout=dropout, shortcut_kind=shortcut_kind, init=init,
            )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tl.dense(x, num_classes, name="logits", init=init)
    return Network(inputs, outputs, name=name)


# Paper 001 (ResNet5M), Table 1: rows 1-12. Row 1 is the notebook network with dropout 0.2.
RESNET5M_ROWS = {
    1: dict(block_types="basic", blocks=(2, 3, 2, 2), widths=(64, 128, 192, 256), dropout=0.2),
    2: dict(block_types="basic", blocks=(2, 3, 2, 2), widths=(64, 128, 192, 256)),
    3: dict(block_types="basic", blocks=(2, 3, 2, 2), widths=(64, 128, 192, 256)),
    4: dict(block_types="basic", blocks=(2, 3, 2, 2), widths=(64, 128, 192, 256)),
    5: dict(block_types="basic", blocks=(2, 2, 2, 2), widths=(64, 128, 232, 268)),
    6: dict(block_types="basic", blocks=(2, 2, 2, 2), widths=(64, 128, 232, 268)),
    7: dict(block_types="bottleneck", blocks=(2, 2, 2, 2), widths=(64, 118, 178, 256)),
    8: dict(block_types=("bottleneck", "basic", "basic", "bottleneck"), blocks=(2, 2, 2, 2),
            widths=(64, 128, 232, 256)),
    9: dict(block_types=("basic", "bottleneck", "bottleneck", "basic"), blocks=(2, 2, 2, 2),
            widths=(64, 100, 160, 256)),
    10: dict(block_types="bottleneck", blocks=(3, 4, 6, 3), widths=(64, 96, 128, 190)),
    11: dict(block_types="bottleneck", blocks=(3, 4, 6, 3), widths=(64, 96, 128, 190)),
    12: dict(block_types="bottleneck", blocks=(3, 8, 36, 3), widths=(64, 72, 74, 90)),
}


@register("resnet5m", paper="001")
def resnet5m(num_classes=10, *, row=6, **overrides):
    """Paper 001's 4-stage ResNet; `row` picks a Table 1 preset, overrides change it."""
    if row not in RESNET5M_ROWS:
        raise ValueError(f"resnet5m row must be one of 1-12; got {row!r}.")
    config = {**RESNET5M_ROWS[row], **overrides}
    return cifar_resnet(num_classes, name=f"resnet5m_row{row}", **config)


resnet5m.forwards_to = cifar_resnet


@register("modified_resnet", paper="002")
def modified_resnet(num_classes=10):
    """Paper 002: kuangliu's ResNet-18 without its last stage."""
    return cifar_resnet(num_classes, blocks=(2, 2, 2), widths=(64, 128, 256), name="modified_resnet")


@register("se_resnet", paper="003")
def se_resnet(num_classes=10):
    """Paper 003: one SE block (r=16) after the stem, stages [4, 3, 2, 3]."""
    return cifar_resnet(
        num_classes, blocks=(4, 3, 2, 3), widths=(64, 128, 128, 256), strides=(1, 2, 1, 2),
        se_reduction=16, name="se_resnet",
    )


def he_resnet(num_classes=10, *, depth):
    """He et al. (2015) CIFAR ResNet-(6n+2): option-A shortcuts, He normal init."""
    check_numbers("depth", depth, minimum=8, whole=True)
    if (depth - 2) % 6:
        raise ValueError(f"He CIFAR ResNets have depth 6n+2; got {depth}.")
    n = (depth - 2) // 6
    return cifar_resnet(
        num_classes, blocks=(n, n, n), widths=(16, 32, 64), shortcut_kind="option_a",
        init=tl.kaiming_normal(), name=f"resnet{depth}",
    )


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}", paper="he2015")(
        lambda num_classes=10, _d=_depth: he_resnet(num_classes, depth=_d)
    )
