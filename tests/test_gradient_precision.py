"""benchmarks/gradient_precision.py: float32 gradients of the fast path, Keras's own
ops and the PyTorch twin against the twin's float64 ones."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.gradient_precision import WAYS, compare, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compare_measures_relative_error_and_refuses_a_wrong_layout():
    rng = np.random.default_rng(0)
    exact = {("conv", "kernel"): rng.normal(size=(8, 3, 3, 3)),  # OIHW
             ("logits", "kernel"): rng.normal(size=(10, 8)),
             ("bn", "gamma"): rng.normal(size=8)}
    assert compare(dict(exact), exact)[0] == 0.0
    scaled = {**exact, ("bn", "gamma"): 1.1 * exact[("bn", "gamma")]}
    total, largest, share = compare(scaled, exact)
    assert (largest, share) == ("bn/gamma", 1.0)
    part = np.sum(exact[("bn", "gamma")] ** 2) / sum(np.sum(g ** 2) for g in exact.values())
    assert total == pytest.approx(0.1 * part ** 0.5)
    with pytest.raises(ValueError, match="shape"):  # never broadcast a wrong layout
        compare({**exact, ("logits", "kernel"): exact[("logits", "kernel")].T}, exact)


def test_kernels_are_laid_out_as_copy_weights_lays_them_out():
    """keras_gradients puts each kernel's gradient in the layout copy_weights gives
    the twin's weights (the twin's logits test pins that layout down)."""
    pytest.importorskip("torch")
    import keras

    from benchmarks.torch_port import TorchPort, copy_weights, torch_layout

    inputs = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))
    twin = copy_weights(TorchPort(model), model)
    for name in ("dw", "conv", "dense"):
        layer = model.get_layer(name)
        module = twin.layers[name]
        expected = module.conv.weight if hasattr(module, "conv") else module.weight
        got = torch_layout(type(layer).__name__, np.asarray(layer.get_weights()[0]))
        np.testing.assert_array_equal(got, expected.detach().numpy())


def test_benchmark_finds_float32_rounding_only(tmp_path):
    pytest.importorskip("torch")
    output = tmp_path / "precision.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gradient_precision.py"), "resnet20",
         "--batch", "4", "--json", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(output.read_text())["rows"]
    for way in WAYS:  # float32 rounding: above 0, far below a wrong backward pass's ~1
        assert 0.0 < row[way][0] < 1e-4, (way, row[way])
    assert "| resnet20 | 4 |" in (tmp_path / "precision.md").read_text()


def test_unknown_experiment_is_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["resnet21", "--json", str(tmp_path / "x.json")])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "resnet21" in error and "--list" in error
    assert not (tmp_path / "x.json").exists()
