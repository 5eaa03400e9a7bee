"""The PyTorch twin that benchmarks/throughput.py times: for each benchmarked
network, the same trainable parameter count and, with the Keras weights
copied in, the same logits (which pins padding, strides and layer order)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.throughput import DEFAULT_MODELS  # noqa: E402
from benchmarks.torch_port import TorchPort, copy_weights, l2_groups, parameter_count  # noqa: E402
from experiments.recipes import EXPERIMENTS  # noqa: E402
from models import build_model, count_params  # noqa: E402


@pytest.mark.parametrize("experiment", DEFAULT_MODELS)
def test_port_has_the_parameters_and_the_logits_of_the_keras_network(experiment):
    recipe = EXPERIMENTS[experiment]
    model = build_model(recipe.model, 10, **recipe.model_args)
    port = copy_weights(TorchPort(model), model).eval()
    assert parameter_count(port) == count_params(model)[0]
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    with torch.no_grad():
        got = port(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_port_accumulates_residuals_in_place_with_the_same_gradients():
    """`out += shortcut` where an Add is the only reader of a fresh activation, as
    the papers' blocks write it: the gradients of the out-of-place sums."""
    model = build_model("modified_resnet", 10)
    port = copy_weights(TorchPort(model), model).train()
    assert len(port.accumulate) == 6  # every residual block's Add
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype("float32"))
    gradients = []
    for accumulate in (dict(port.accumulate), {}):
        port.accumulate = accumulate
        port.zero_grad()
        port(images).square().sum().backward()
        gradients.append([p.grad.clone() for p in port.parameters()])
    for in_place, summed in zip(*gradients):
        torch.testing.assert_close(in_place, summed, rtol=1e-5, atol=1e-6)


def test_keras_l2_becomes_coupled_weight_decay_on_those_kernels():
    model = build_model("kth_resnet_b", 10)
    port = TorchPort(model)
    groups = l2_groups(port, model)
    decayed = {group["weight_decay"]: len(group["params"]) for group in groups[1:]}
    regularised = [layer for layer in model.layers if getattr(layer, "kernel_regularizer", None)]
    assert sum(decayed.values()) == len(regularised) > 0
    assert set(decayed) == {2 * float(layer.kernel_regularizer.l2) for layer in regularised}
    assert sum(len(group["params"]) for group in groups) == len(list(port.parameters()))


@pytest.mark.slow
def test_throughput_benchmark_writes_ratios_per_backend(tmp_path):
    """One step per measurement on a small network: the JSON has the ratio fields
    the report promises and the table names each backend."""
    import json
    import os
    import platform
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "throughput.py"), "--backends", "torch",
         "--models", "cnn_baseline", "--steps", "1", "--rounds", "2", "--no-memory",
         "--batch-size", "16", "--precision", "fp32", "bf16", "--json", str(output)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(output.read_text())
    row, half = saved["rows"]
    assert (row["precision"], half["precision"]) == ("fp32", "bf16")
    # Both precisions are timed in every round: bf16's speed-up is the median of
    # the rounds' own ratios, and lies within their range.
    keras_speedup, torch_speedup, paired = saved["bf16_speedup"]["cnn_baseline"]
    assert paired == half["keras_train_over_fp32_rounds"] and len(paired) == 2
    assert keras_speedup == pytest.approx(sum(paired) / 2)
    assert torch_speedup == pytest.approx(sum(half["torch_train_over_fp32_rounds"]) / 2)
    assert min(paired) <= keras_speedup <= max(paired)
    assert row["backend"] == "torch" and row["experiment"] == "cnn_baseline"
    assert saved["batch"] == row["batch"] == half["batch"] == 16
    for key in ("keras_train_ips", "torch_train_ips", "keras_infer_ips", "torch_infer_ips"):
        assert row[key] > 0
    assert row["train_ratio"] == pytest.approx(row["keras_train_ips"] / row["torch_train_ips"])
    assert row["infer_ratio"] == pytest.approx(row["keras_infer_ips"] / row["torch_infer_ips"])
    assert row["torch_train_ips"] == max(row["torch_train_nchw"], row["torch_train_channels_last"])
    # Each round's paired ratio is kept; the table gives their range after the median.
    for kind in ("train", "infer"):
        rounds = row[f"{kind}_ratio_rounds"]
        assert len(rounds) == 2 and min(rounds) <= row[f"{kind}_ratio"] * 1.0001
        assert max(rounds) >= row[f"{kind}_ratio"] * 0.9999
    assert saved["versions"]["torch"] == torch.__version__
    # glibc's thresholds raised in the torch child, as run.py does (Linux with glibc).
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert saved["malloc_keeps_freed_memory"] == {"torch": glibc}
    table = (tmp_path / "throughput.md").read_text()
    assert "| cnn_baseline (" in table and "| torch |" in table and "(throughput_notes.md)" in table
    assert "alternating; batch 16, " in table
    assert (f"cnn_baseline Keras {keras_speedup:.2f}x ({min(paired):.2f}-{max(paired):.2f}) / "
            f"PyTorch {torch_speedup:.2f}x") in table
    rounds = row["train_ratio_rounds"]
    assert f"**{row['train_ratio']:.2f}** ({min(rounds):.2f}-{max(rounds):.2f})" in table
    assert f"keeps freed memory for reuse (training/allocator.py, as run.py sets it; both " \
           f"frameworks share the process): torch {'yes' if glibc else 'no'}." in table

    # --merge joins runs' rows (here the same run twice) and says so in the table.
    merged = tmp_path / "merged.json"
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "throughput.py"), "--merge",
         str(output), str(output), "--json", str(merged)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    joined = json.loads(merged.read_text())
    assert joined["rows"] == saved["rows"] * 2 and len(joined["merged_from"]) == 2
    assert joined["bf16_speedup"] == saved["bf16_speedup"]
    assert "Joined from 2 runs of this setting" in (tmp_path / "merged.md").read_text()

    # Runs at different batch sizes are not one setting: the merge names the sizes.
    other = tmp_path / "batch32.json"
    other.write_text(json.dumps({**saved, "batch": 32,
                                 "rows": [{**r, "batch": 32} for r in saved["rows"]]}))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "throughput.py"), "--merge",
         str(output), str(other), "--json", str(tmp_path / "mixed.json")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "batch sizes [16, 32]" in result.stderr
    assert not (tmp_path / "mixed.json").exists()
    # Merging into a merged report adds runs to its list instead of nesting it as one.
    again = tmp_path / "again.json"
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "throughput.py"), "--merge",
         str(merged), str(output), "--json", str(again)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads(again.read_text())["merged_from"]) == 3
    assert "Joined from 3 runs of this setting" in (tmp_path / "again.md").read_text()


def test_gpu_peak_memory_is_the_allocators_peak_over_the_training_steps(monkeypatch):
    """On a GPU the benchmark reads each framework's device allocator: PyTorch's
    caching allocator (peak reset before the steps) and, for Keras on JAX, the
    device's peak above what was in use before. Fake allocators stand in for a GPU."""
    import types

    import keras

    from benchmarks import throughput

    mib = 2**20
    events = []

    class FakeCuda:
        allocated, peak = 100 * mib, 500 * mib

        def synchronize(self):
            events.append("synchronize")

        def reset_peak_memory_stats(self):
            FakeCuda.peak = FakeCuda.allocated

        def memory_allocated(self):
            return FakeCuda.allocated

        def max_memory_allocated(self):
            return FakeCuda.peak

    def torch_train(layout):
        events.append(("torch_train", layout))
        FakeCuda.peak = FakeCuda.allocated + 300 * mib  # the steps' activations

    stats = {"bytes_in_use": 40 * mib, "peak_bytes_in_use": 90 * mib}  # 90: model building
    device = types.SimpleNamespace(memory_stats=lambda: dict(stats))

    def keras_train():
        events.append("keras_train")
        stats["peak_bytes_in_use"] = 40 * mib + 250 * mib

    case = types.SimpleNamespace(
        torch=types.SimpleNamespace(cuda=FakeCuda(), channels_last="channels_last"),
        torch_train=torch_train, keras_train=keras_train)
    # The peak left from before the steps (500 MiB) is reset, not counted.
    assert throughput.device_peak_mb("torch", case) == 300
    assert ("torch_train", "channels_last") in events and events[-1] == "synchronize"

    jax = pytest.importorskip("jax")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(jax, "local_devices", lambda: [device])
    assert throughput.device_peak_mb("keras", case) == 250
    assert events[-1] == "keras_train"
