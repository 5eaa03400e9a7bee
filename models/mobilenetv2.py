"""Paper 000: kuangliu's CIFAR MobileNetV2 with expansion factor 7.

Differences from the ImageNet MobileNetV2 that the paper's count depends on: the
expansion conv exists even at t=1, the activation is ReLU (not ReLU6), the
residual is added only at stride 1 (a 1x1 conv + BN projection when the channel
count changes), and the stem and the second row have stride 1 on 32x32 inputs.
"""

import keras
from keras import layers

from models import layers as tl
from models.native_graph import Network
from models.registry import check_numbers, register

# (expansion, output channels, blocks, first stride) per row; `None` takes the
# network's expansion factor. Row 1 keeps t=1 as in kuangliu's code.
ROWS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
        (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


def inverted_residual(x, out_channels, expansion, strides, *, name):
    hidden = expansion * x.shape[-1]
    y = tl.conv(x, hidden, 1, name=f"{name}_expand")
    y = layers.ReLU(name=f"{name}_expand_relu")(tl.batch_norm(y, name=f"{name}_expand_bn"))
    y = tl.depthwise_conv(y, 3, strides, name=f"{name}_depthwise")
    y = layers.ReLU(name=f"{name}_depthwise_relu")(tl.batch_norm(y, name=f"{name}_depthwise_bn"))
    y = tl.conv(y, out_channels, 1, name=f"{name}_project")
    y = tl.batch_norm(y, name=f"{name}_project_bn")
    if strides != 1:
        return y
    if x.shape[-1] != out_channels:
        x = tl.batch_norm(tl.conv(x, out_channels, 1, name=f"{name}_shortcut_conv"),
                          name=f"{name}_shortcut_bn")
    return layers.Add(name=f"{name}_add")([y, x])


@register("mobilenetv2", paper="000")
def mobilenetv2(num_classes=10, *, expansion=7, row_strides=None):
    """row_strides: the first stride of each of the 7 rows (default 1,1,2,2,1,2,1)."""
    row_strides = tuple(row_strides or (row[3] for row in ROWS))
    if len(row_strides) != len(ROWS):
        raise ValueError(f"row_strides needs {len(ROWS)} entries; got {row_strides}.")
    check_numbers("row_strides", row_strides, choices=(1, 2))
    check_numbers("expansion", expansion, minimum=1, whole=True)
    inputs = keras.Input((32, 32, 3), name="image")
    x = tl.conv(inputs, 32, 3, name="stem_conv")
    x = layers.ReLU(name="stem_relu")(tl.batch_norm(x, name="stem_bn"))
    block = 0
    for (t, channels, count, _), first_stride in zip(ROWS, row_strides):
        for index in range(count):
            x = inverted_residual(x, channels, t or expansion, first_stride if index == 0 else 1,
                                  name=f"block{block}")
            block += 1
    x = tl.conv(x, 1280, 1, name="head_conv")
    x = layers.ReLU(name="head_relu")(tl.batch_norm(x, name="head_bn"))
    # kuangliu pools with kernel 4 on the 4x4 map, i.e. globally; global pooling
    # also serves the stride-2 variant, whose map is 2x2.
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = tl.dense(x, num_classes, name="logits")
    return Network(inputs, outputs, name=f"mobilenetv2_t{expansion}")
