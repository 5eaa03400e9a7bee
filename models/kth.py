"""Paper 004 (KTH DD2424, written in Keras): the VGG-style CNNs and ResNets A-C.

Keras conventions of the original code are kept: convs have biases, he_uniform
where the code asked for it (glorot elsewhere), Keras BatchNorm defaults, L2
only on the layers that declared it (`l2(lambda)` adds lambda * sum(w**2) to the
loss), Keras's padding="same" for strided convs, and BatchNorm *after* ReLU
("relu_bn"). The heads return logits; the suite's loss applies the softmax that
the original's last layer did.
"""

import keras
from keras import layers, regularizers

from models import layers as tl
from models import native
from models.native_graph import Network

from models.registry import check_numbers, register

NORMS = ("batch", "layer", "group", "instance")


def norm_layer(kind, *, name):
    """Paper 004's normalisation study; tfa's Group/InstanceNormalization map to
    Keras's GroupNormalization(32) and GroupNormalization(-1), epsilon 1e-3."""
    if kind == "batch":
        return native.BatchNormalization(name=name)
    if kind == "layer":
        return layers.LayerNormalization(axis=-1, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=32, epsilon=1e-3, name=name)
    if kind == "instance":
        return layers.GroupNormalization(groups=-1, epsilon=1e-3, name=name)
    raise ValueError(f"Unknown normalization {kind!r}; expected one of {NORMS}.")


def _l2(value):
    return regularizers.L2(value) if value else None


def vgg_cnn(num_classes=10, *, blocks=3, norm=None, pool_dropout=(), dense_dropout=0.0,
            l2=0.0, name="kth_cnn"):
    """VGG blocks of two 3x3 convs (32, 64, 128 filters) and a 2x2 max-pool, then
    Dense(128). `norm` follows every conv and the dense layer (after the ReLU);
    pool_dropout[i] follows pool i; `l2` applies to every conv and Dense(128)."""
    if not 1 <= blocks <= 3:
        raise ValueError(f"blocks must be 1, 2 or 3; got {blocks}.")
    check_numbers("dropout", [*pool_dropout, dense_dropout], minimum=0, below=1)
    check_numbers("l2", l2, minimum=0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    for block, filters in enumerate((32, 64, 128)[:blocks]):
        for index in range(2):
            x = native.Conv2D(filters, 3, padding="same", activation="relu",
                              kernel_initializer="he_uniform", kernel_regularizer=_l2(l2),
                              name=f"block{block + 1}_conv{index + 1}")(x)
            if norm:
                x = norm_layer(norm, name=f"block{block + 1}_norm{index + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block + 1}_pool")(x)
        if block < len(pool_dropout) and pool_dropout[block]:
            x = native.Dropout(pool_dropout[block], name=f"block{block + 1}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", kernel_initializer="he_uniform",
                     kernel_regularizer=_l2(l2), name="dense")(x)
    if norm:
        x = norm_layer(norm, name="dense_norm")(x)
    if dense_dropout:
        x = native.Dropout(dense_dropout, name="dense_drop")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype=tl.LOGITS_DTYPE)(x)
    return Network(inputs, outputs, name=name)


@register("kth_vgg1", paper="004")
def kth_vgg1(num_classes=10):
    return vgg_cnn(num_classes, blocks=1, name="kth_vgg1")


@register("kth_vgg2", paper="004")
def kth_vgg2(num_classes=10):
    return vgg_cnn(num_classes, blocks=2, name="kth_vgg2")


@register("kth_vgg3", paper="004")
def kth_vgg3(num_classes=10, *, dropout=0.0, l2=0.0):
    """BaseLine3; dropout=0.2 is BaseLine_Dropout, l2=0.001 is BaseLine_L2."""
    return vgg_cnn(num_classes, blocks=3, pool_dropout=(dropout,) * 3, dense_dropout=dropout,
                   l2=l2, name="kth_vgg3")


@register("kth_vgg3_bn_dropout", paper="004")
def kth_vgg3_bn_dropout(num_classes=10, *, pool_dropout=(0.2, 0.3, 0.4), dense_dropout=0.5,
                        l2=0.0):
    """DropoutAugemntantationBN: BN after every ReLU, dropout 0.2/0.3/0.4 + 0.5 (the
    defaults; the cnn_regularization search varies them and adds L2)."""
    if not isinstance(pool_dropout, (list, tuple)) or len(pool_dropout) != 3:
        raise ValueError(f"pool_dropout must list one rate per block (3); got {pool_dropout!r}.")
    return vgg_cnn(num_classes, blocks=3, norm="batch", pool_dropout=tuple(pool_dropout),
                   dense_dropout=dense_dropout, l2=l2, name="kth_vgg3_bn_dropout")


@register("kth_norm_cnn", paper="004")
def kth_norm_cnn(num_classes=10, *, norm="batch", dropout=0.2, l2=0.005):
    """The normalisation-study CNN (project_code.ipynb)."""
    return vgg_cnn(num_classes, blocks=3, norm=norm, pool_dropout=(dropout,) * 3,
                   dense_dropout=dropout, l2=l2, name=f"kth_norm_cnn_{norm}")


def relu_bn(x, *, name):
    """The KTH scripts' activation: ReLU, then BatchNorm."""
    x = layers.ReLU(name=f"{name}_relu")(x)
    return native.BatchNormalization(name=f"{name}_bn")(x)


def residual_block(x, filters, downsample, *, l2, dropout, name):
    y = native.Conv2D(filters, 3, strides=2 if downsample else 1, padding="same",
                      kernel_initializer="he_uniform", kernel_regularizer=_l2(l2),
                      name=f"{name}_conv1")(x)
    y = relu_bn(y, name=f"{name}_mid")
    y = native.Conv2D(filters, 3, padding="same", kernel_initializer="he_uniform",
                      kernel_regularizer=_l2(l2), name=f"{name}_conv2")(y)
    if dropout:
        y = native.Dropout(dropout, name=f"{name}_drop")(y)
    if downsample:  # glorot init, bias, no L2, as in the original
        x = native.Conv2D(filters, 1, strides=2, padding="same", name=f"{name}_shortcut")(x)
    return relu_bn(layers.Add(name=f"{name}_add")([x, y]), name=f"{name}_out")


STEMS = ("A", "B", "C")


def kth_resnet(num_classes=10, *, stages, widths, stem, l2, dropout=0.0,
               relu_bn_before_blocks=False, head="gap", name="kth_resnet"):
    """stem A: BN(input) -> conv -> relu_bn; B: BN(input) -> conv; C: conv -> BN -> relu_bn.
    The first block of every stage after the first halves the resolution."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}; got {stem!r}.")
    if len(stages) != len(widths):
        raise ValueError(f"stages and widths need the same length; got {stages}, {widths}.")
    check_numbers("stages", stages, minimum=1, whole=True)
    check_numbers("widths", widths, minimum=1, whole=True)
    check_numbers("dropout", dropout, minimum=0, below=1)
    check_numbers("l2", l2, minimum=0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = inputs
    if stem in ("A", "B"):
        x = native.BatchNormalization(name="input_bn")(x)
    x = native.Conv2D(widths[0], 3, padding="same", kernel_initializer="he_uniform",
                      kernel_regularizer=_l2(l2), name="stem_conv")(x)
    if stem == "C":
        x = native.BatchNormalization(name="stem_conv_bn")(x)
    if stem in ("A", "C"):
        x = relu_bn(x, name="stem")
    for stage, (count, filters) in enumerate(zip(stages, widths)):
        for index in range(count):
            block = f"stage{stage + 1}_block{index + 1}"
            if relu_bn_before_blocks:
                x = relu_bn(x, name=f"{block}_pre")
            x = residual_block(x, filters, downsample=stage > 0 and index == 0, l2=l2,
                               dropout=dropout, name=block)
    if head == "avgpool4":
        x = layers.AveragePooling2D(4, name="pool")(x)
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype=tl.LOGITS_DTYPE)(x)
    return Network(inputs, outputs, name=name)


@register("kth_resnet_a", paper="004")
def kth_resnet_a(num_classes=10):
    """ResNet-A (ResNet.py): stages [2,5,5,2], 32-256 filters, L2 1e-3."""
    return kth_resnet(num_classes, stages=(2, 5, 5, 2), widths=(32, 64, 128, 256), stem="A",
                      l2=1e-3, head="avgpool4", name="kth_resnet_a")


@register("kth_resnet_b", paper="004")
def kth_resnet_b(num_classes=10, *, stages=(3, 3), widths=(64, 128), dropout=0.2, l2=1e-4):
    """ResNet-B (BestResNet.py); stages (3, 3, 3) with widths (64, 128, 256) is the
    suite's reading of the paper's unpublished deeper ResNet."""
    return kth_resnet(num_classes, stages=tuple(stages), widths=tuple(widths), stem="B", l2=l2,
                      dropout=dropout, relu_bn_before_blocks=True,
                      name=f"kth_resnet_b{len(stages)}")


@register("kth_resnet_c", paper="004")
def kth_resnet_c(num_classes=10):
    """ResNet-C (ResNet_Jan.ipynb), the noisy-label network: stages [3, 9], 32/64."""
    return kth_resnet(num_classes, stages=(3, 9), widths=(32, 64), stem="C", l2=1e-4,
                      name="kth_resnet_c")
