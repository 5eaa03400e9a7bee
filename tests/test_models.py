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


@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_every_family_runs_on_other_backends(backend):
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", FORWARD_SCRIPT.format(root=ROOT)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend {backend}" in result.stdout
    assert "kth_resnet_b (1048080, 3334)" in result.stdout
    assert "se_resnet (4993166, 7552)" in result.stdout


@pytest.mark.slow  # KERAS_BACKEND=torch python -m pytest runs the module directly
def test_fast_path_module_on_the_torch_backend():
    """tests/test_native_torch.py, which checks the PyTorch-backend fast path
    against Keras's own implementation, run under KERAS_BACKEND=torch (the suite
    itself runs on TensorFlow, where that module skips)."""
    pytest.importorskip("torch")
    if keras.backend.backend() == "torch":
        pytest.skip("the module runs in this process already")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         os.path.join(ROOT, "tests", "test_native_torch.py")],
        env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]