"""Every network of the five papers: exact parameter counts, shapes, saving,
initialisers and PyTorch-style strided padding."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from models import MODELS, build_model, count_params
from models import layers as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (model, kwargs, trainable, non-trainable): the issue's table, from the papers' code.
COUNTS = [
    ("kth_vgg1", {}, 1_060_138, 0),
    ("kth_vgg2", {}, 591_274, 0),
    ("kth_vgg3", {}, 550_570, 0),
    ("kth_vgg3", {"dropout": 0.2}, 550_570, 0),
    ("kth_vgg3", {"l2": 0.001}, 550_570, 0),
    ("kth_vgg3_bn_dropout", {}, 551_722, 1_152),
    ("kth_norm_cnn", {"norm": "batch"}, 551_722, 1_152),
    ("kth_norm_cnn", {"norm": "layer"}, 551_722, 0),
    ("kth_norm_cnn", {"norm": "group"}, 551_722, 0),
    ("kth_norm_cnn", {"norm": "instance"}, 551_722, 0),
    ("kth_resnet_a", {}, 3_908_496, 6_214),
    ("kth_resnet_b", {}, 1_048_080, 3_334),
    ("kth_resnet_b", {"stages": (3, 3, 3), "widths": (64, 128, 256)}, 4_332_304, 7_686),
    ("kth_resnet_c", {}, 708_234, 2_816),
    ("mobilenetv2", {"expansion": 7}, 2_598_074, 39_824),
    ("mobilenetv2", {"expansion": 6}, 2_296_922, 35_088),
    ("mobilenetv2", {"expansion": 5}, 1_995_770, 30_352),
    ("mobilenetv2", {"row_strides": (1, 2, 2, 2, 1, 2, 1)}, 2_597_642, 39_776),
    ("resnet5m", {"row": 1}, 4_479_946, 6_912),
    ("resnet5m", {"row": 2}, 4_479_946, 6_912),
    ("resnet5m", {"row": 3}, 4_479_946, 6_912),
    ("resnet5m", {"row": 4}, 4_479_946, 6_912),
    ("resnet5m", {"row": 5}, 4_994_298, 6_920),
    ("resnet5m", {"row": 6}, 4_994_298, 6_920),
    ("resnet5m", {"row": 7}, 4_991_978, 19_840),
    ("resnet5m", {"row": 8}, 4_952_602, 13_968),
    ("resnet5m", {"row": 9}, 4_991_146, 11_520),
    ("resnet5m", {"row": 10}, 4_996_446, 26_920),
    ("resnet5m", {"row": 11}, 4_996_446, 26_920),
    ("resnet5m", {"row": 12}, 4_991_598, 46_952),
    ("modified_resnet", {}, 2_777_674, 4_480),
    ("se_resnet", {}, 4_993_166, 7_552),
    ("resnet20", {}, 269_722, 1_376),
    ("resnet32", {}, 464_154, 2_272),
    ("resnet44", {}, 658_586, 3_168),
    ("resnet56", {}, 853_018, 4_064),
    ("resnet110", {}, 1_727_962, 8_096),
]


@pytest.mark.parametrize("name, kwargs, trainable, non_trainable", COUNTS,
                         ids=[f"{c[0]}-{c[1]}" for c in COUNTS])
def test_exact_parameter_counts_and_output_shapes(name, kwargs, trainable, non_trainable):
    model = build_model(name, 10, **kwargs)
    assert count_params(model) == (trainable, non_trainable)
    assert model.output_shape == (None, 10)
    wide = build_model(name, 100, **kwargs)
    assert wide.output_shape == (None, 100)
    # Only the head grows: (100 - 10) * (features + 1) more weights.
    features = model.layers[-1].input.shape[-1]
    assert count_params(wide)[0] == trainable + 90 * (features + 1)


def test_resnet_deep_on_cifar100():
    model = build_model("kth_resnet_b", 100, stages=(3, 3, 3), widths=(64, 128, 256))
    assert count_params(model) == (4_355_434, 7_686)


@pytest.mark.parametrize("name, args, message", [
    ("kth_resnet_b", {"stages": [1, -1, 1], "widths": [8, 8, 8]}, "stages must be a whole number >= 1 each"),
    ("kth_resnet_b", {"stages": [1, 1], "widths": [8, 0]}, "widths must be a whole number >= 1 each"),
    ("kth_resnet_b", {"dropout": 1.0}, "dropout must be a number >= 0 below 1"),
    ("kth_vgg3", {"l2": -0.1}, "l2 must be a number >= 0"),
    ("resnet5m", {"blocks": [1, 1, 0, 1]}, "blocks must be a whole number >= 1 each"),
    ("resnet5m", {"strides": [1, 3, 2, 2]}, "strides must be one of (1, 2) each"),
    ("mobilenetv2", {"expansion": 2.5}, "expansion must be a whole number >= 1"),
])
def test_builders_refuse_counts_a_loop_would_misread(name, args, message):
    """range(-1) builds no block and a stride of 3 builds fine: refused, not built."""
    with pytest.raises(ValueError) as error:
        build_model(name, 10, **args)
    assert message in str(error.value)


def test_check_args_names_what_each_builder_takes():
    from models import check_args

    check_args("resnet5m", {"row": 1, "blocks": [1, 1, 1, 1]})  # forwarded to cifar_resnet
    for name, args, message in [
        ("kth_resnet_b", {"stagez": [1]}, "kth_resnet_b does not take ['stagez']; it takes dropout, l2, stages, widths"),
        ("resnet20", {"depth": 32}, "resnet20 does not take ['depth']; it takes no arguments"),
        ("resnet5m", {"name": "x"}, "resnet5m does not take ['name']"),
    ]:
        with pytest.raises(ValueError) as error:
            check_args(name, args)
        assert message in str(error.value)


def test_every_registered_model_is_counted():
    assert {row[0] for row in COUNTS} == set(MODELS)


@pytest.mark.parametrize("name", ["kth_resnet_b", "mobilenetv2", "se_resnet", "resnet20"])
def test_keras_save_and_load_gives_identical_predictions(name, tmp_path):
    model = build_model(name, 10)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def kernel(model, layer):
    return keras.ops.convert_to_numpy(model.get_layer(layer).kernel)


def assert_variance(weights, expected, distribution):
    """Sample variance within five standard errors of `expected`.

    The standard error of a sample variance is sqrt((kurtosis - 1) / n)
    relative: kurtosis 9/5 for a uniform, 3 for a normal distribution.
    """
    kurtosis = {"uniform": 9 / 5, "normal": 3.0}[distribution]
    relative_error = 5 * np.sqrt((kurtosis - 1) / weights.size)
    assert weights.var() == pytest.approx(expected, rel=relative_error)


def test_initialisers_follow_each_source():
    keras.utils.set_random_seed(0)
    # PyTorch default: U(+-1/sqrt(fan_in)), variance 1/(3 fan_in).
    model = build_model("modified_resnet", 10)
    weights = kernel(model, "stage3_block2_conv1")
    fan_in = 3 * 3 * 256
    assert np.abs(weights).max() <= 1 / np.sqrt(fan_in)
    assert_variance(weights, 1 / (3 * fan_in), "uniform")
    bias = keras.ops.convert_to_numpy(model.get_layer("logits").bias)
    assert np.abs(bias).max() <= 1 / np.sqrt(256) and np.abs(bias).max() > 0
    depthwise = keras.ops.convert_to_numpy(
        build_model("mobilenetv2", 10).get_layer("block10_depthwise").kernel)
    assert np.abs(depthwise).max() <= 1 / 3  # fan_in = 3*3 per group
    assert_variance(depthwise, 1 / (3 * 9), "uniform")
    # He et al.: kaiming normal, variance 2/fan_in.
    he = kernel(build_model("resnet56", 10), "stage3_block2_conv1")
    assert_variance(he, 2 / (9 * 64), "normal")
    # Paper 004 (Keras): he_uniform convs, variance 2/fan_in; glorot shortcut.
    kth = kernel(build_model("kth_resnet_b", 10), "stage2_block2_conv1")
    assert_variance(kth, 2 / (9 * 128), "uniform")
    shortcut = kernel(build_model("kth_resnet_b", 10), "stage2_block1_shortcut")
    assert_variance(shortcut, 2 / (64 + 128), "uniform")  # glorot_uniform


def test_pytorch_models_use_torch_batchnorm_and_no_conv_bias():
    model = build_model("se_resnet", 10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == 0.9 and layer.epsilon == 1e-5
            assert layer.unbiased_moving_variance, layer.name
        if isinstance(layer, keras.layers.Conv2D) and "_se_" not in layer.name \
                and not layer.name.startswith("stem_se"):
            assert not layer.use_bias, layer.name


BATCH_NORM_STEP_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
import keras
from models import native
from models.layers import TORCH_BN

# One training-mode step on 4x4 and 2x2 maps (batch 8: n = 128 and 32 values a
# channel) against torch.nn.BatchNorm2d: outputs and running statistics.
rng = np.random.default_rng(0)
worst, keras_rule = 0.0, []
for size in (4, 2):
    x = rng.normal(1.0, 2.0, size=(8, size, size, 5)).astype("float32")
    ours = native.BatchNormalization(**TORCH_BN)
    out = keras.ops.convert_to_numpy(ours(x, training=True))
    reference = torch.nn.BatchNorm2d(5)
    expected = reference(torch.tensor(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    for got, wanted in ((out, expected),
                        (ours.moving_mean, reference.running_mean),
                        (ours.moving_variance, reference.running_var)):
        got = keras.ops.convert_to_numpy(got)
        wanted = np.asarray(wanted.detach() if hasattr(wanted, "detach") else wanted)
        worst = max(worst, float(np.max(np.abs(got - wanted) / np.maximum(np.abs(wanted), 1))))
    # Paper 004's Keras networks keep Keras's rule: the biased batch variance.
    plain = native.BatchNormalization(momentum=0.9, epsilon=1e-5)
    plain(x, training=True)
    biased = 0.9 + 0.1 * x.reshape(-1, 5).var(0)
    keras_rule.append(float(np.max(np.abs(keras.ops.convert_to_numpy(plain.moving_variance) - biased))))
print("worst", worst)
print("keras_rule", max(keras_rule))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_torch_convention_batch_norm_updates_running_variance_as_pytorch(backend):
    """PyTorch's running_var takes the unbiased batch variance (n / (n - 1)):
    Keras's rule ran 0.8% low on 2x2 maps at batch 8 (0.2% at batch 128)."""
    pytest.importorskip("torch")
    pytest.importorskip(backend)
    result = subprocess.run([sys.executable, "-c", BATCH_NORM_STEP_SCRIPT.format(root=ROOT)],
                            env={**os.environ, "KERAS_BACKEND": backend},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert float(lines["worst"]) <= 1e-6, result.stdout
    assert float(lines["keras_rule"]) <= 1e-6, result.stdout


def test_strided_conv_samples_like_pytorch_padding_one():
    """A 3x3 stride-2 conv whose kernel picks its centre returns x[0::2, 0::2], as
    PyTorch's padding=1 does; Keras's padding='same' would return x[1::2, 1::2]."""
    x = np.arange(8 * 8, dtype=np.float32).reshape(1, 8, 8, 1)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, tl.conv(inputs, 1, 3, 2, name="probe"))
    centre = np.zeros((3, 3, 1, 1), np.float32)
    centre[1, 1] = 1.0
    model.get_layer("probe").set_weights([centre])
    np.testing.assert_array_equal(model.predict(x, verbose=0)[0, :, :, 0], x[0, ::2, ::2, 0])
    # Every strided 3x3 conv of the PyTorch-derived networks is explicitly padded.
    for name in ("modified_resnet", "mobilenetv2", "se_resnet", "resnet20", "resnet5m"):
        for layer in build_model(name, 10).layers:
            if getattr(layer, "strides", (1, 1)) == (2, 2) and getattr(layer, "kernel_size", (1, 1)) == (3, 3):
                assert layer.padding == "valid", (name, layer.name)
                assert isinstance(layer._inbound_nodes[0].parent_nodes[0].operation,
                                  keras.layers.ZeroPadding2D), (name, layer.name)


def test_option_a_shortcut_subsamples_and_pads_channels():
    x = np.arange(2 * 4 * 4 * 2, dtype=np.float32).reshape(2, 4, 4, 2)
    out = keras.ops.convert_to_numpy(tl.SubsampleChannelPad(2, 1, 1)(x))
    assert out.shape == (2, 2, 2, 4)
    np.testing.assert_array_equal(out[..., 1:3], x[:, ::2, ::2, :])
    assert not out[..., 0].any() and not out[..., 3].any()


FORWARD_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {root!r})
import keras
from models import build_model, count_params
x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
for name in ("kth_resnet_b", "kth_norm_cnn", "mobilenetv2", "se_resnet", "resnet20"):
    model = build_model(name, 10)
    out = keras.ops.convert_to_numpy(model(x, training=False))
    assert out.shape == (2, 10) and np.isfinite(out).all(), name
    print(name, count_params(model))
print("backend", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_family_runs_on_other_backends(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", FORWARD_SCRIPT.format(root=ROOT)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend {backend}" in result.stdout
    assert "kth_resnet_b (1048080, 3334)" in result.stdout
    assert "se_resnet (4993166, 7552)" in result.stdout


NATIVE_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
import keras
from models import native

calls = {{"conv": 0, "batch_norm": 0, "direct": 0}}
for name, module, attribute in (("conv", native, "_torch_conv2d"),
                                ("batch_norm", torch.nn.functional, "batch_norm"),
                                ("direct", native, "_direct_call")):
    def counted(*args, _name=name, _original=getattr(module, attribute), **kwargs):
        result = _original(*args, **kwargs)
        calls[_name] += result is not None  # Keras's own path calls none of these
        return result
    setattr(module, attribute, counted)

def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = native.Conv2D(6, 3, padding="same", use_bias=True, activation="relu")(inputs)
    x = native.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = native.Conv2D(8, 3, strides=2, padding="valid", use_bias=False)(x)
    x = native.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = native.BatchNormalization()(x)
    y = native.Conv2D(16, 1, strides=2, padding="same")(x)   # no padding
    z = native.Conv2D(16, 3, strides=2, padding="same")(x)   # Keras pads bottom/right only
    x = keras.layers.Add()([y, z])
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    return native.Network(inputs, outputs)

x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
results = []
for use_native in (True, False):
    native.NATIVE_TORCH = use_native
    model = build()
    before = dict(calls)
    images = torch.tensor(x, requires_grad=True)
    out = model(images, training=True)
    out.square().sum().backward()
    results.append([out.detach().numpy(), images.grad.numpy(),
                    *[v.value.grad.numpy() for v in model.trainable_variables],
                    *[v.numpy() for v in model.non_trainable_variables],
                    keras.ops.convert_to_numpy(model(x, training=False))])
    used = {{k: calls[k] - before[k] for k in calls}}
    print("native" if use_native else "keras", used)
worst = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
            for a, b in zip(*results))
print("worst", worst)
print("arrays", len(results[0]), len(model.trainable_variables), len(model.non_trainable_variables))
native.NATIVE_TORCH = True
# The plan releases every intermediate tensor exactly once, at its last reader,
# and never a model output. A step reads what its node reads, or, through a
# node folded into it (the ZeroPadding2D before the strided conv), what that
# node reads.
model = build()
plan = model._torch_plan(False)
nodes = [node for depth in model._nodes_by_depth.values() for node in depth if not node.is_input]
producer = {{id(x): node for node in nodes for x in node.outputs}}
computed = {{key for step in plan for key in step[3]}}
def reads(node):
    for tensor in node.input_tensors:
        if id(tensor) in producer and id(tensor) not in computed:
            yield from reads(producer[id(tensor)])
        else:
            yield tensor
readers = {{}}
for index, step in enumerate(plan):
    for tensor in reads(next(node for node in nodes if id(node.outputs[0]) == step[3][0])):
        readers.setdefault(id(tensor), []).append(index)
released = [(key, index) for index, step in enumerate(plan) for key in step[4]]
outputs = {{id(x) for x in model.outputs}}
print("plan", len(plan), len(released) == len(set(k for k, _ in released)),
      all(index == max(readers[key]) for key, index in released),
      set(k for k, _ in released) == set(readers) - outputs)
# Mixed precision: the plan casts inputs and opens the autocast scopes as each
# layer's __call__ would, so its result equals Functional.call's (training=None
# takes Keras's own walk) bit for bit.
keras.config.set_dtype_policy("mixed_bfloat16")
model = build()
before = calls["direct"]
out = model(x, training=False)
direct = calls["direct"] - before
reference = model(x)
print("mixed", direct, out.dtype, float((out.float() - reference.float()).abs().max()))
# And against Keras's own layers in bf16 (BatchNorm takes the bf16 input with
# float32 statistics in one kernel there): training outputs and input gradients.
mixed = []
for use_native in (True, False):
    native.NATIVE_TORCH = use_native
    images = torch.tensor(x, requires_grad=True)
    out = build()(images, training=True)
    out.float().square().sum().backward()
    mixed.append([out.detach().float().numpy(), images.grad.numpy()])
native.NATIVE_TORCH = True
print("mixed_worst", max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                         for a, b in zip(*mixed)))
# Inference in float32: a BatchNorm that only reads a convolution runs inside it,
# and a ReLU that only reads a fresh activation overwrites it. Against
# Functional's walk of the same model: without gradients (folded weights
# cached), after the variables change, and with gradients (to the kernels).
keras.config.set_dtype_policy("float32")
in_place = []
original_in_place = native._relu_in_place
native._relu_in_place = lambda layer: in_place.append(layer.name) or original_in_place(layer)
added = []
original_add = native._add_in_place
native._add_in_place = lambda layer, k: added.append((layer.name, k)) or original_add(layer, k)
def build_folded():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    conv = native.Conv2D(6, 3, padding="same", use_bias=True)
    norm = native.BatchNormalization()
    depthwise = native.DepthwiseConv2D(3, padding="same", depth_multiplier=2)
    x = keras.layers.ReLU(name="relu_fresh")(norm(conv(inputs)))  # folded
    y = native.BatchNormalization(center=False, scale=False)(depthwise(x))  # folded
    z = native.Conv2D(12, 1)(x)
    # z is read twice: not folded, and the Add accumulates into the BatchNorm's output.
    z = keras.layers.Add(name="add_shared")([z, native.BatchNormalization()(z)])
    x = keras.layers.ReLU(name="relu_add")(keras.layers.Add(name="add_fresh")([y, z]))
    x = keras.layers.ReLU(name="relu_view")(keras.layers.Reshape((8, 8, 12))(x))  # a view: kept
    strided = native.Conv2D(5, 3, strides=2, use_bias=False)
    x = native.BatchNormalization()(strided(keras.layers.ZeroPadding2D(1)(x)))  # one conv
    x = keras.layers.ReLU(name="relu_strided")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = native.Network(inputs, outputs)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.variables:
                variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    return model, conv, norm, depthwise, strided

model, conv, norm, depthwise, strided = build_folded()
rng = np.random.default_rng(3)
images = torch.tensor(rng.normal(size=(3, 8, 8, 3)).astype("float32"))
kept = images.clone()
walk = lambda: super(native.Network, model).call(images, training=False)
with torch.no_grad():
    pairs = [(model(images, training=False), walk())]
    conv.kernel.assign(conv.kernel + 0.1)
    norm.moving_variance.assign(norm.moving_variance * 3.0)
    pairs.append((model(images, training=False), walk()))
results = []
for function in (lambda: model(images, training=False), walk):
    out = function()
    results.append([out.detach(), *torch.autograd.grad(
        out.square().sum(), [conv.kernel.value, depthwise.kernel.value, strided.kernel.value])])
pairs += list(zip(*results))
print("folded", len(model._torch_plan(False)), len(model._torch_plan(True)), sorted(set(in_place)),
      bool(torch.equal(images, kept)))
print("added_in_place", sorted(set(added)))
print("folded_worst", max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in pairs))
# Training: the same three ReLUs overwrite their input (the one after the
# BatchNorm through the tensor its NHWC view shows, so that the backward pass
# copies nothing); outputs and every gradient as Functional's walk computes them.
model = build_folded()[0]
relu_calls = []
original_relu_ = torch.relu_
torch.relu_ = lambda tensor: relu_calls.append(tensor._base is None) or original_relu_(tensor)
results = []
for function in (lambda: model(images, training=True),
                 lambda: super(native.Network, model).call(images, training=True)):
    out = function()
    results.append([out.detach(), *torch.autograd.grad(
        out.square().sum(), [v.value for v in model.trainable_variables])])
torch.relu_ = original_relu_
# Relative to each array's scale, at least 1: a conv bias before a BatchNorm in
# training has a gradient of zero, computed as rounding noise (~1e-7).
print("trained_in_place", relu_calls, len(results[0]),
      max(float((a - b).abs().max() / max(b.abs().max(), 1.0)) for a, b in zip(*results)))
# Mixed precision: folded from the float32 variables, one bf16 rounding of each
# activation where Keras's layers round twice.
keras.config.set_dtype_policy("mixed_bfloat16")
model = build_folded()[0]
with torch.no_grad():
    out, reference = model(images, training=False), walk()
print("folded_mixed", len(model._torch_plan(False, "bfloat16")), out.dtype,
      float((out.float() - reference.float()).abs().max() / reference.float().abs().max()))
# bf16 strided depthwise convolutions take their input gradient in float32
# (native._strided_depthwise_conv): against float64 on the same bf16 values, for
# an asymmetric "same" padding (8x8 input) and a symmetric one (9x9).
strided_used = []
original_strided = native._strided_depthwise_conv
native._strided_depthwise_conv = lambda: strided_used.append(1) or original_strided()
def relative_errors(computed, wanted):  # each bf16 result against its float64 twin
    return [float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip(computed, wanted)]
errors = []
for size in (8, 9):
    layer = native.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2,
                                   bias_initializer="random_normal")
    images = torch.tensor(rng.normal(size=(4, size, size, 5)), dtype=torch.bfloat16,
                          requires_grad=True)
    out = layer(images)
    grad = torch.tensor(rng.normal(size=tuple(out.shape)), dtype=torch.bfloat16)
    computed = [out, *torch.autograd.grad(out, [images, layer.kernel.value, layer.bias.value],
                                          grad)]
    top = 0 if size == 8 else 1  # Keras's "same" pads an even input bottom/right only
    x64 = torch.nn.functional.pad(images.detach().double().permute(0, 3, 1, 2),
                                  (top, 1, top, 1)).requires_grad_()
    kernel64 = layer.kernel.value.detach().to(torch.bfloat16).double().requires_grad_()
    bias64 = layer.bias.value.detach().to(torch.bfloat16).double().requires_grad_()
    out64 = torch.nn.functional.conv2d(x64, kernel64.reshape(3, 3, 1, 10).permute(3, 2, 0, 1),
                                       bias64, stride=2, groups=5).permute(0, 2, 3, 1)
    wanted = [out64, *torch.autograd.grad(out64, [x64, kernel64, bias64], grad.double())]
    wanted[1] = wanted[1][:, :, top:top + size, top:top + size].permute(0, 2, 3, 1)
    errors += relative_errors(computed, wanted)
with torch.no_grad():
    layer(images)  # nothing to differentiate: the plain convolution
print("strided_bf16", len(strided_used), computed[1].dtype, max(errors))
native._strided_depthwise_conv = original_strided
# bf16 BatchNorm in training with channels that are not a multiple of 16 runs on
# the column view (native._column_batch_norm): outputs, input, gamma and beta
# gradients and the moving statistics against float64 on the same bf16 values,
# for 24 channels over 4x8x8 pixels (16 pixels a row) and 40 over 4x6x6 (8 a
# row); 48 channels take PyTorch's kernel.
column_used = []
original_column = native._column_batch_norm
native._column_batch_norm = lambda: column_used.append(1) or original_column()
errors = []
for channels, size in ((24, 8), (40, 6), (48, 4)):
    layer = native.BatchNormalization(momentum=0.5, epsilon=1e-3, gamma_initializer="random_uniform",
                                      beta_initializer="random_normal")
    images = torch.tensor(rng.normal(1.0, 2.0, size=(4, size, size, channels)),
                          dtype=torch.bfloat16, requires_grad=True)
    out = layer(images, training=True)
    grad = torch.tensor(rng.normal(size=tuple(out.shape)), dtype=torch.bfloat16)
    computed = [out, *torch.autograd.grad(out, [images, layer.gamma.value, layer.beta.value], grad),
                layer.moving_mean.value, layer.moving_variance.value]
    x64 = images.detach().double().requires_grad_()
    gamma64 = layer.gamma.value.detach().double().requires_grad_()
    beta64 = layer.beta.value.detach().double().requires_grad_()
    mean64, variance64 = x64.mean((0, 1, 2)), x64.var((0, 1, 2), correction=0)
    out64 = (x64 - mean64) / torch.sqrt(variance64 + 1e-3) * gamma64 + beta64
    wanted = [out64, *torch.autograd.grad(out64, [x64, gamma64, beta64], grad.double()),
              0.5 * mean64.detach(), 0.5 + 0.5 * variance64.detach()]
    errors += relative_errors(computed, wanted)
print("column_bf16", len(column_used), computed[0].dtype, max(errors))
native._column_batch_norm = original_column
keras.config.set_dtype_policy("float32")
"""


def run_on_torch(script):
    """Runs `script` (formatted with the project root) on the PyTorch backend in a
    child process; returns the result and its stdout's "key value" lines."""
    pytest.importorskip("torch")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", script.format(root=ROOT)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_native_torch_layers_match_keras_on_the_torch_backend():
    """models/native.py's PyTorch-kernel path against Keras's own implementation:
    outputs, input and weight gradients, moving statistics and inference."""
    result, lines = run_on_torch(NATIVE_SCRIPT)
    # Native: the five convs (four Conv2D, one depthwise) and both BatchNorms, once
    # training and once inferring.
    # Network calls eight of its eleven layers' call() directly, training and
    # inferring: the ZeroPadding2D is the strided conv's own padding, one step,
    # and the Add accumulates into a convolution's output.
    assert lines["native"] == "{'conv': 10, 'batch_norm': 4, 'direct': 16}", result.stdout
    assert lines["keras"] == "{'conv': 0, 'batch_norm': 0, 'direct': 0}", result.stdout
    assert lines["mixed"] == "8 torch.bfloat16 0.0", result.stdout
    assert float(lines["mixed_worst"]) < 2e-2, result.stdout  # bf16 has 8 mantissa bits
    assert lines["plan"] == "10 True True True", result.stdout
    # Eighteen layers; the ZeroPadding2D is its conv's padding (17 steps
    # training); three BatchNorms folded into their convolutions in inference,
    # the one after the padded conv included (14); the ReLUs after a BatchNorm
    # and after an Add overwrite their input, the one after a Reshape (a view)
    # does not, and the model's input is untouched.
    assert lines["folded"] == "14 17 ['relu_add', 'relu_fresh', 'relu_strided'] True", \
        result.stdout
    assert float(lines["folded_worst"]) < 1e-5, result.stdout
    # Each Add writes over the operand only it reads.
    assert lines["added_in_place"] == "[('add_fresh', 0), ('add_shared', 1)]", result.stdout
    # Training overwrites in place too, never a view; same values and gradients.
    calls, compared, gap = lines["trained_in_place"].rsplit(" ", 2)
    assert calls == "[True, True, True]" and compared == "16", result.stdout  # output + 15 gradients
    assert float(gap) < 1e-6, result.stdout
    steps, dtype, gap = lines["folded_mixed"].split()
    assert (steps, dtype) == ("14", "torch.bfloat16"), result.stdout
    assert float(gap) < 2e-2, result.stdout  # bf16 has 8 mantissa bits
    used, dtype, gap = lines["strided_bf16"].split()
    assert (used, dtype) == ("2", "torch.bfloat16"), result.stdout  # training calls only
    assert float(gap) < 1e-2, result.stdout  # one bf16 rounding (2**-8) of each result
    used, dtype, gap = lines["column_bf16"].split()
    assert (used, dtype) == ("2", "torch.bfloat16"), result.stdout  # 24 and 40 channels
    assert float(gap) < 1e-2, result.stdout
    arrays, trainable, statistics = map(int, lines["arrays"].split())
    assert (trainable, statistics) == (15, 4)
    assert arrays == 2 + trainable + statistics + 1  # all compared
    assert float(lines["worst"]) < 1e-5, result.stdout


DROPOUT_SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {root!r})
import keras
from models import native

keras_calls = []
for module, attribute in ((torch, "bernoulli"), (torch.nn.functional, "dropout")):
    def counted(*args, _original=getattr(module, attribute), **kwargs):
        keras_calls.append(1)
        return _original(*args, **kwargs)
    setattr(module, attribute, counted)

keras.utils.set_random_seed(0)
layer = native.Dropout(0.2)
x = torch.full((250, 4000), 3.0, requires_grad=True)
y = layer(x, training=True)
y.sum().backward()
dropped = (y == 0).double()
print("dropped", float(dropped.mean()))
print("kept", sorted(set(y[y != 0].tolist())))
print("grad_is_mask", bool(torch.equal(x.grad * 3.0, y.detach())))
flat = dropped.flatten()
print("neighbour_corr", float(np.corrcoef(flat[:-1].numpy(), flat[1:].numpy())[0, 1]))
half = native.Dropout(0.5)(x, training=True)
print("dropped_half", float((half == 0).double().mean()))
again = layer(x, training=True)
print("next_call_differs", bool((again != y).any()))
keras.utils.set_random_seed(0)
print("seed_repeats", bool(torch.equal(native.Dropout(0.2)(x, training=True), y)))
print("native_only", len(keras_calls))
print("inference", bool(torch.equal(layer(x, training=False), x)))
small = native.Dropout(0.3, dtype="bfloat16")(torch.ones(3, 5), training=True)
print("bf16", small.dtype, sorted(set(small.flatten().tolist())))
rows = native.Dropout(0.5, noise_shape=(250, 1))(torch.ones(250, 4000), training=True)
print("noise_shape", bool(((rows == 0).all(1) | (rows != 0).all(1)).all()), len(keras_calls) > 0)
"""


def test_native_dropout_on_the_torch_backend():
    """native.Dropout's NumPy-drawn mask: the rate, the scaling, the gradient,
    independence, seeding, and Keras's path where it does not apply."""
    result, lines = run_on_torch(DROPOUT_SCRIPT)
    # A million units: the standard error of the dropped fraction is 4e-4 at
    # rate 0.2 and 5e-4 at 0.5; five of them either side.
    assert abs(float(lines["dropped"]) - 0.2) < 2e-3, result.stdout
    assert abs(float(lines["dropped_half"]) - 0.5) < 2.5e-3, result.stdout
    assert abs(float(lines["neighbour_corr"])) < 5e-3, result.stdout
    assert lines["kept"] == "[3.75]", result.stdout  # 3 / (1 - 0.2)
    assert lines["grad_is_mask"] == "True", result.stdout
    assert lines["next_call_differs"] == "True", result.stdout
    assert lines["seed_repeats"] == "True", result.stdout
    assert lines["native_only"] == "0", result.stdout  # neither bernoulli nor F.dropout
    assert lines["inference"] == "True", result.stdout
    # bf16 stays bf16; 1 / 0.7 rounded to bf16's 8 bits.
    assert lines["bf16"] == "torch.bfloat16 [0.0, 1.4296875]", result.stdout
    assert lines["noise_shape"] == "True True", result.stdout  # Keras's own dropout
