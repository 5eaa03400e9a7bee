"""Every experiment's recipe as data: it validates, its pieces build, its
schedule gives the paper's rates; label noise; groups; and quick runs of the
training paths the recipes add (noise, mixup, AutoAugment, plateau, transfer)."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data.augment import Augmenter
from data.noise import CIFAR10_ASYMMETRIC, corrupt_labels
from data.normalize import PerImage
from experiments.recipes import EXPERIMENTS, GROUPS
from training.optimizer_specs import SGD
from training.schedules import Cosine, Step
from training import schedules
from training.recipe import RecipeError, apply_override, apply_overrides, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "experiments", "run.py")

REQUIRED = {
    "cnn_baseline", "cnn_vgg2", "cnn_vgg3", "cnn_dropout", "cnn_augmentation", "cnn_l2",
    "cnn_regularized", "cnn_best", "resnet_plain", "resnet_step", "resnet_deep",
    "resnet_cifar100", "noisy_labels", "norm_batch", "norm_layer", "norm_group",
    "norm_instance", "mobilenetv2", "mobilenetv2_t5", "mobilenetv2_t6", "mobilenetv2_adam",
    "mobilenetv2_stride2", "modified_resnet", "se_resnet_mixup", "resnet20", "resnet32",
    "resnet44", "resnet56", "resnet110", "resnet_cifar100_transfer",
} | {f"resnet5m_row{row}" for row in range(1, 13)}


def run(*args, timeout=900):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          timeout=timeout)


def history(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_every_named_experiment_and_group_exists():
    assert REQUIRED <= set(EXPERIMENTS)
    assert {"cnn_progression", "noise_sweep", "norm_comparison", "resnet5m_table",
            "optimizer_comparison", "mobilenetv2_expansion", "he_resnets"} <= set(GROUPS)
    for members in GROUPS.values():
        assert set(members) <= set(EXPERIMENTS)
    assert GROUPS["resnet5m_table"] == [f"resnet5m_row{row}" for row in range(1, 13)]
    assert GROUPS["optimizer_comparison"] == [f"resnet5m_row{row}" for row in range(1, 5)]
    sweep = [(EXPERIMENTS[name].noise.kind, EXPERIMENTS[name].noise.rate)
             for name in GROUPS["noise_sweep"]]
    assert sweep == [("symmetric", 0.0), ("symmetric", 0.2), ("symmetric", 0.4),
                     ("symmetric", 0.6), ("symmetric", 0.8), ("asymmetric", 0.4)]


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_recipe_pieces_build_and_run_on_a_batch(name):
    """Everything a run builds from the recipe, short of the network (whose counts
    test_models checks): validation, augmentation on a uint8 batch, normalisation,
    the optimizer, the schedule at every epoch, mixup and noise."""
    recipe = EXPERIMENTS[name]
    validate(recipe)
    assert recipe.paper_source, "every experiment says where its number comes from"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    normalizer = recipe.normalization.build().fit(x)
    if normalizer.stage == "before":
        x = normalizer(x)
    augmented = Augmenter(recipe.augment)(x, rng)
    assert augmented.shape == x.shape
    out = augmented if normalizer.stage == "before" else normalizer(augmented)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    recipe.optimizer.build()
    lr = recipe.optimizer.learning_rate
    if recipe.schedule.kind in schedules.EPOCH_KINDS:
        rates = [recipe.schedule.lr_at(e, lr, recipe.epochs) for e in range(recipe.epochs)]
        assert all(np.isfinite(rates)) and min(rates) >= 0
    if recipe.noise:
        recipe.noise.check(recipe.dataset)


def recipe_lrs(name):
    recipe = EXPERIMENTS[name]
    lr = recipe.optimizer.learning_rate
    return [recipe.schedule.lr_at(e, lr, recipe.epochs) for e in range(recipe.epochs)]


def test_recipe_schedules_give_the_papers_rates():
    step = recipe_lrs("resnet_step")
    assert step[:52] == [pytest.approx(0.1)] * 52
    assert step[52:77] == [pytest.approx(0.01)] * 25
    assert step[77:] == [pytest.approx(0.001)] * 23
    mobilenet = recipe_lrs("mobilenetv2")
    np.testing.assert_allclose(mobilenet, [0.045 * 0.98 ** e for e in range(200)], rtol=1e-12)
    row1 = recipe_lrs("resnet5m_row1")
    assert len(row1) == 65 and row1[0] == pytest.approx(0.004)
    assert int(np.argmax(row1)) == 19 and row1[19] == pytest.approx(0.1, rel=1e-3)
    assert row1[64] == pytest.approx(4e-7, rel=0.01)
    row6 = recipe_lrs("resnet5m_row6")
    np.testing.assert_allclose(row6, [0.005 * (1 + math.cos(math.pi * e / 200)) for e in range(200)])
    se = recipe_lrs("se_resnet_mixup")
    # Through the notebook's logged peak at epoch 415 of its clean phase range(400, 450).
    assert len(se) == 416 and se[0] == pytest.approx(0.1) and se[400] == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(se[400:], [0.05 * (1 + math.cos(math.pi * t / 400))
                                          for t in range(400, 416)], rtol=1e-9, atol=1e-15)
    assert EXPERIMENTS["se_resnet_mixup"].mixup.stop_epoch == 400
    assert EXPERIMENTS["se_resnet_mixup"].optimizer.clipvalue == 0.1
    plateau = EXPERIMENTS["modified_resnet"].schedule
    assert (plateau.kind, plateau.monitor, plateau.factor, plateau.patience) == (
        "plateau", "val_loss", 0.1, 5)
    for depth in (20, 110):
        he = EXPERIMENTS[f"resnet{depth}"]
        rate = he.schedule.optimizer_rate(he.optimizer.learning_rate)
        # Keras passes the updates done so far: the update after 32,000 uses 0.01.
        assert float(rate(31999)) == pytest.approx(0.1) and float(rate(32000)) == pytest.approx(0.01)
        assert float(rate(47999)) == pytest.approx(0.01) and float(rate(48000)) == pytest.approx(0.001)
        assert float(rate(0)) == pytest.approx(0.01 if depth == 110 else 0.1)  # 110's warm-up
        assert he.epochs * math.ceil(50000 / he.batch_size) >= 64000
    assert "best of 5 runs" in EXPERIMENTS["resnet110"].paper_source
    assert "best of 5 runs" in EXPERIMENTS["resnet110"].notes
    noisy = recipe_lrs("noisy_labels")  # LearningController(50)
    assert noisy == [pytest.approx(0.1)] * 27 + [pytest.approx(0.01)] * 12 + [pytest.approx(0.001)] * 11
    for row in (11, 12):  # "Trained for only 130 epochs", of the T_max-200 cosine
        rates = recipe_lrs(f"resnet5m_row{row}")
        start = EXPERIMENTS[f"resnet5m_row{row}"].optimizer.learning_rate
        assert len(rates) == 130 and rates[-1] / start == pytest.approx(
            (1 + math.cos(math.pi * 129 / 200)) / 2) and 0.27 < rates[-1] / start < 0.29


def test_resnet5m_rows_take_their_optimizers():
    names = {row: EXPERIMENTS[f"resnet5m_row{row}"].optimizer.kind for row in range(1, 13)}
    assert names == {1: "sgd", 2: "adagrad", 3: "rmsprop", 4: "adam", 5: "adam", 6: "sgd",
                     7: "sgd", 8: "sgd", 9: "sgd", 10: "sgd", 11: "adam", 12: "sgd"}
    row6 = EXPERIMENTS["resnet5m_row6"]
    assert row6.optimizer == SGD(learning_rate=0.01, momentum=0.9, weight_decay=5e-4)
    assert {"op": "autoaugment"} in row6.augment and row6.paper_accuracy == 95.55
    assert "assumption" in EXPERIMENTS["resnet5m_row2"].notes


# ---------------------------------------------------------------- label noise
LABELS = np.repeat(np.arange(10), 5000)


@pytest.mark.parametrize("kind", ["symmetric", "uniform", "asymmetric", "pair"])
def test_noise_rates(kind):
    rate = 0.4
    noisy, flipped = corrupt_labels(LABELS, 10, kind, rate, seed=3)
    assert np.array_equal(flipped, noisy != LABELS)
    n = len(LABELS)
    if kind == "symmetric":
        expected = rate
        others = noisy[flipped & (LABELS == 0)]
        counts = np.bincount(others, minlength=10)[1:]  # uniform over the other 9
        assert counts.min() > 0.8 * counts.mean() and (noisy[LABELS == 0] != 0).any()
    elif kind == "uniform":
        expected = rate * 9 / 10  # the true class is among the draws
    elif kind == "asymmetric":
        expected = rate * 5 / 10  # five of the ten classes have a target
        assert set(zip(LABELS[flipped], noisy[flipped])) == set(CIFAR10_ASYMMETRIC.items())
    else:
        expected = rate
        assert np.array_equal(noisy[flipped], (LABELS[flipped] + 1) % 10)
    assert abs(flipped.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_symmetric_exact_flips_an_exact_count_per_class():
    noisy, flipped = corrupt_labels(LABELS, 10, "symmetric_exact", 0.2, seed=0)
    assert [int(flipped[LABELS == c].sum()) for c in range(10)] == [1000] * 10
    assert (noisy[flipped] != LABELS[flipped]).all()


def test_noise_is_seeded():
    first = corrupt_labels(LABELS, 10, "symmetric", 0.2, seed=5)[0]
    assert np.array_equal(first, corrupt_labels(LABELS, 10, "symmetric", 0.2, seed=5)[0])
    assert not np.array_equal(first, corrupt_labels(LABELS, 10, "symmetric", 0.2, seed=6)[0])


@pytest.mark.parametrize("edit, message", [
    ("noise.rate=1.5", "rate must be a number in [0, 1]"),
    ('noise.kind="gaussian"', "kind must be one of"),
])
def test_bad_noise_settings_are_refused(edit, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        apply_override(EXPERIMENTS["noisy_labels"], edit)


def test_a_new_schedule_kind_keeps_only_the_fields_it_takes():
    recipe = apply_overrides(EXPERIMENTS["mobilenetv2"], ["schedule.kind=cosine", "schedule.t_max=50"])
    assert recipe.schedule == Cosine(t_max=50)  # exponential's gamma is dropped
    recipe = apply_overrides(EXPERIMENTS["resnet_deep"], ["schedule.t_max=30", "schedule.kind=cosine"])
    assert recipe.schedule == Cosine(t_max=30)
    with pytest.raises(RecipeError, match=r"schedule 'exponential' needs \['gamma'\]"):
        apply_overrides(EXPERIMENTS["resnet_deep"], ["schedule.kind=exponential"])
    # He et al.'s boundaries count optimizer steps: they are not carried into epochs.
    with pytest.raises(RecipeError, match=r"schedule 'step' needs \['boundaries'\]"):
        apply_overrides(EXPERIMENTS["resnet20"], ["schedule.kind=step"])
    recipe = apply_overrides(EXPERIMENTS["resnet20"], ["schedule.kind=step", "schedule.boundaries=[100,150]"])
    assert recipe.schedule == Step(boundaries=[100, 150])
    with pytest.raises(RecipeError, match="schedule.t_max must be a number of epochs > 0; got 'abc'"):
        apply_overrides(EXPERIMENTS["resnet_deep"], ["schedule.kind=cosine", "schedule.t_max=abc"])


@pytest.mark.parametrize("edit, message", [
    ('label_mode="coarse"', "label_mode must be one of fine for cifar10"),
    ("eval_batch_size=0", "eval_batch_size must be a whole number >= 1"),
])
def test_fields_the_data_reads_are_checked_before_it_loads(edit, message):
    with pytest.raises(RecipeError, match=message):
        apply_override(EXPERIMENTS["resnet_deep"], edit)
    assert apply_override(EXPERIMENTS["resnet_cifar100"], 'label_mode="coarse"').label_mode == "coarse"


def test_normalization_fields_are_checked_as_the_run_reads_them():
    recipe = apply_overrides(EXPERIMENTS["mobilenetv2"], ["normalization.kind=per_image"])
    assert recipe.normalization == PerImage()  # channel's stats are dropped
    for edit, message in [("normalization.stage=middle", "stage must be 'before' or 'after'"),
                          ('normalization.stats="kuangliu"', "stats are read only by kind 'channel'"),
                          ("normalization.scale_bug=true", "true only with kind 'per_pixel'")]:
        with pytest.raises(RecipeError, match=message):
            apply_override(EXPERIMENTS["resnet_deep"], edit)


def test_noise_transfer_and_early_stopping_are_typed_sections():
    from training.engine import quick_recipe

    noisy = apply_overrides(EXPERIMENTS["noisy_labels"], ["noise.seed=7"])
    assert noisy.noise.to_dict() == {"kind": "symmetric", "rate": 0.05, "seed": 7}
    labels = np.arange(1000) % 10
    corrupted, flipped, seed = noisy.noise.corrupt(labels, 10, run_seed=0)
    assert seed == 7 and np.array_equal(corrupted, corrupt_labels(labels, 10, "symmetric", 0.05, 7)[0])
    assert EXPERIMENTS["noisy_labels"].noise.corrupt(labels, 10, run_seed=3)[2] == 3
    with pytest.raises(RecipeError, match=r"noise does not take \['level'\]; it takes kind, rate, seed"):
        apply_overrides(EXPERIMENTS["cnn_baseline"], ['noise={"kind": "pair", "level": 0.1}'])
    with pytest.raises(RecipeError, match="noise: kind 'asymmetric' is CIFAR-10's class map"):
        apply_overrides(EXPERIMENTS["resnet_cifar100"], ['noise={"kind": "asymmetric", "rate": 0.2}'])
    assert apply_overrides(EXPERIMENTS["noisy_labels"], ["noise={}"]).noise is None

    stopping = apply_overrides(EXPERIMENTS["cnn_baseline"], ["early_stopping.patience=3"]).early_stopping
    assert stopping.to_dict() == {"patience": 3}  # unset fields take Keras's defaults
    callback = stopping.callback()
    assert (type(callback).__name__, callback.patience, callback.monitor) == ("EarlyStopping", 3, "val_loss")
    with pytest.raises(RecipeError, match="early_stopping does not take \\['wait'\\]"):
        apply_overrides(EXPERIMENTS["cnn_baseline"], ['early_stopping={"wait": 3}'])
    assert apply_overrides(EXPERIMENTS["cnn_baseline"], ["early_stopping={}"]).early_stopping is None

    transfer = EXPERIMENTS["resnet_cifar100_transfer"]
    assert transfer.to_dict()["transfer"] == {"source": "resnet_deep", "run": None, "head_epochs": 5,
                                              "head_learning_rate": 0.1}
    assert transfer.transfer.head_rate(0.01) == 0.1
    assert apply_overrides(transfer, ["transfer.head_learning_rate=null"]).transfer.head_rate(0.01) == 0.01
    assert quick_recipe(transfer).transfer.head_epochs == 1  # one epoch each stage
    with pytest.raises(RecipeError, match=r"transfer.head_epochs must be a whole number in \[0, epochs\)"):
        apply_overrides(transfer, ["transfer.head_epochs=30"])


def test_a_new_optimizer_keeps_only_the_momentum_fields_it_reads():
    recipe = apply_overrides(EXPERIMENTS["resnet20"], ["optimizer.name=adam"])
    assert "momentum" not in recipe.optimizer.to_dict() and recipe.optimizer.weight_decay == 1e-4
    assert apply_overrides(EXPERIMENTS["resnet20"], ["optimizer.name=rmsprop"]).optimizer.momentum == 0.9
    with pytest.raises(RecipeError, match="optimizer.momentum=0.9 is not read by adam; set it to 0"):
        apply_override(EXPERIMENTS["mobilenetv2_adam"], "optimizer.momentum=0.9")
    with pytest.raises(RecipeError, match="optimizer.nesterov=true is not read by rmsprop"):
        apply_overrides(EXPERIMENTS["resnet20"], ["optimizer.name=rmsprop", "optimizer.nesterov=true"])
    with pytest.raises(RecipeError, match="optimizer.nesterov: expected true or false like false, got '1'"):
        apply_override(EXPERIMENTS["resnet20"], "optimizer.nesterov=1")


# ---------------------------------------------------------------- quick runs
# These runs test the recipe's training path, not the network (the model tests
# build every network), so they swap in a small one to keep the suite fast.
SMALL_RESNET5M = ["--set", 'model="resnet5m"', "--set", "model_args.blocks=[1,1,1,1]",
                  "--set", "model_args.widths=[8,8,16,16]"]
SMALL_KTH = ["--set", 'model="kth_vgg1"']


def quick(name, data, out, *extra):
    result = run(name, "--quick", "--data-dir", data, "--output-dir", out, *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = os.path.join(out, name, "seed0-quick")
    with open(os.path.join(run_dir, "metrics.json")) as stream:
        return run_dir, json.load(stream)


def test_a_network_that_does_not_build_leaves_no_record_to_match(shared_cifar10, tmp_path):
    """Refused after the data load, the run writes no config.json, so the corrected
    command reruns under the same run id instead of meeting a changed recipe."""
    bad = [*SMALL_RESNET5M, "--set", "model_args.blocks=[1,-1,1,1]"]
    result = run("resnet5m_row6", "--quick", "--data-dir", shared_cifar10, "--output-dir",
                 str(tmp_path), *bad)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "do not build resnet5m: blocks must be a whole number >= 1 each" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "resnet5m_row6"))  # nor an empty folder
    quick("resnet5m_row6", shared_cifar10, str(tmp_path), *SMALL_RESNET5M)


def test_noisy_labels_quick_run_records_the_noise(shared_cifar10, tmp_path):
    run_dir, metrics = quick("noisy_labels", shared_cifar10, str(tmp_path),
                             "--set", "noise.rate=0.3", *SMALL_KTH)
    saved = np.load(os.path.join(run_dir, "noise.npz"))
    flipped = saved["flipped_indices"]
    assert metrics["noise_flipped"] == len(flipped) > 0
    assert metrics["noise_actual_rate"] == pytest.approx(len(flipped) / len(saved["true_labels"]))
    assert (saved["noisy_labels"][flipped] != saved["true_labels"][flipped]).all()
    rows = history(os.path.join(run_dir, "history.csv"))
    for row in rows:  # memorisation: accuracy on the flipped images, both labelings
        assert 0 <= float(row["flipped_true_accuracy"]) <= 1
        assert 0 <= float(row["flipped_noisy_accuracy"]) <= 1
    assert {"best_test_accuracy", "final_test_accuracy"} <= set(metrics)
    with open(os.path.join(run_dir, "accuracy.json")) as stream:  # the plot says so
        plotted = [line["label"] for line in json.load(stream)["series"]]
    assert plotted == ["train (noisy labels)", "validation (test set)"]


def test_mixup_quick_run_logs_the_epoch_gate(shared_cifar10, tmp_path):
    run_dir, _ = quick("se_resnet_mixup", shared_cifar10, str(tmp_path),
                       "--set", "mixup.stop_epoch=1", *SMALL_RESNET5M)
    rows = history(os.path.join(run_dir, "history.csv"))
    mixer = EXPERIMENTS["se_resnet_mixup"].mixup.replace(stop_epoch=1)
    assert [float(row["mixup"]) for row in rows] == [
        float(mixer.epoch_is_mixed(0, epoch)) for epoch in range(2)]
    assert float(rows[-1]["mixup"]) == 0.0  # past stop_epoch: the clean phase
    with open(os.path.join(run_dir, "loss.json")) as stream:
        assert json.load(stream)["series"][0]["label"] == "train (on mixup batches)"


@pytest.mark.parametrize("name, precision", [
    ("modified_resnet", "fp32"), pytest.param("resnet5m_row6", "bf16", marks=pytest.mark.slow)])
def test_quick_runs_with_the_papers_augmentation(shared_cifar10, tmp_path, name, precision):
    # The papers' recipes (augmentation, optimizer, schedule) on a smaller network.
    run_dir, metrics = quick(name, shared_cifar10, str(tmp_path), *SMALL_RESNET5M,
                             "--precision", precision)
    assert metrics["epochs_run"] == 2
    rows = history(os.path.join(run_dir, "history.csv"))
    assert all(float(row["input_seconds"]) < float(row["seconds"]) for row in rows)
    with open(os.path.join(run_dir, "config.json")) as stream:
        assert json.load(stream)["precision"] == precision
    if precision == "bf16":  # mixed precision: 16-bit compute, float32 variables
        import keras

        model = keras.models.load_model(os.path.join(run_dir, "best.keras"))
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.dtype_policy.name == "mixed_bfloat16"
        assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
        assert all(np.isfinite(float(row["loss"])) for row in rows)
        changed = run(name, "--quick", "--data-dir", shared_cifar10, "--output-dir",
                      str(tmp_path), *SMALL_RESNET5M)  # same run folder, fp32 now
        assert changed.returncode != 0 and "different precision" in changed.stderr


def test_16_bit_precision_on_a_cpu_without_its_instructions_is_warned_of():
    import platform

    from training.machine import cpu_flags, precision_warning

    avx2 = {"sse2", "avx", "avx2", "fma"}
    warning = precision_warning("bf16", "CPU (2 cores, x86_64)", avx2)
    assert "--precision bf16" in warning and "avx512_bf16, amx_bf16 or avx_ne_convert" in warning
    assert "--precision fp32" in warning
    assert "avx512_fp16, amx_fp16 or avx_ne_convert" in precision_warning("fp16", "1 x cpu (cpu)", avx2)
    # Not where the CPU has the instructions, nor on a GPU, nor in fp32, nor where
    # the flags are unknown.
    assert precision_warning("bf16", "CPU (2 cores, x86_64)", avx2 | {"avx512_bf16"}) is None
    assert precision_warning("fp16", "CPU (2 cores, x86_64)", avx2 | {"amx_fp16"}) is None
    assert precision_warning("bf16", "1 x NVIDIA H100 80GB HBM3", avx2) is None
    assert precision_warning("fp32", "CPU (2 cores, x86_64)", avx2) is None
    assert precision_warning("bf16", "CPU (2 cores, arm64)", None) is None
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "sse2" in cpu_flags()


@pytest.mark.parametrize("cpuinfo, model, flags", [
    ("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2\n", "Test CPU 9000", {"fpu", "avx2"}),
    ("processor\t: 0\nFeatures\t: fp asimd\n", None, None),  # Arm names neither
])
def test_the_run_record_names_the_cpu_model(tmp_path, monkeypatch, cpuinfo, model, flags):
    """A CPU run's device names its model, so that train hours in the report compare
    like with like."""
    import builtins

    from training import machine

    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    real_open = builtins.open
    monkeypatch.setattr(machine, "open", lambda path, *args, **kwargs: real_open(
        fake if path == "/proc/cpuinfo" else path, *args, **kwargs), raising=False)
    assert machine.cpu_model() == model and machine.cpu_flags() == flags
    expected = f"CPU ({model + ', ' if model else ''}{os.cpu_count()} cores, "
    assert machine.device_description().startswith(expected)  # the suite's tests run on a CPU


def test_transfer_needs_its_source_then_trains_head_and_network(tmp_path):
    from conftest import write_cifar10, write_cifar100

    data = str(tmp_path / "data")
    write_cifar10(data)
    write_cifar100(data)
    out = str(tmp_path / "runs")
    setting = ["--set", 'transfer.source="cnn_baseline"', "--set", "transfer.head_epochs=1"]
    missing = run("resnet_cifar100_transfer", "--quick", "--data-dir", data,
                  "--output-dir", out, *setting)
    assert missing.returncode == 1
    assert "python experiments/run.py cnn_baseline --quick" in missing.stderr
    quick("cnn_baseline", data, out)
    run_dir, metrics = quick("resnet_cifar100_transfer", data, out, *setting)
    import keras

    model = keras.models.load_model(os.path.join(run_dir, "best.keras"))
    assert model.output_shape == (None, 100)
    assert os.path.exists(os.path.join(run_dir, "head.keras"))
    assert [int(row["epoch"]) for row in history(os.path.join(run_dir, "history.csv"))] == [0, 1]
    with open(os.path.join(run_dir, "config.json")) as stream:
        assert json.load(stream)["transfer_source"].endswith(
            os.path.join("cnn_baseline", "seed0-quick", "best.keras"))
    broken = tmp_path / "broken.keras"
    broken.write_text("not a model")
    bad = run("resnet_cifar100_transfer", "--quick", "--data-dir", data,
              "--output-dir", out, "--run-id", "other", "--set", f'transfer.run="{broken}"')
    assert bad.returncode == 1 and "Cannot load" in bad.stderr


@pytest.mark.slow
def test_group_resumes_after_an_interruption(shared_cifar10, tmp_path):
    """norm_comparison is killed while its second member trains; the rerun skips
    the finished member and completes the rest, past one that fails."""
    out = str(tmp_path)
    args = [sys.executable, RUN, "norm_comparison", "--quick", "--data-dir", shared_cifar10,
            "--output-dir", out]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = os.path.join(out, "norm_layer", "seed0-quick", "history.csv")
    deadline = time.time() + 600
    while not os.path.exists(second) and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(os.path.join(out, "norm_batch", "seed0-quick", "metrics.json"))
    # The third member cannot start (an unreadable record under its run id): the
    # group trains the others, then names it and exits non-zero.
    broken = os.path.join(out, "norm_group", "seed0-quick")
    os.makedirs(broken)
    with open(os.path.join(broken, "config.json"), "w") as stream:
        stream.write("{ half")
    result = run("norm_comparison", "--quick", "--data-dir", shared_cifar10, "--output-dir", out)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "norm_batch: already completed" in result.stdout
    assert "norm_instance: best validation accuracy" in result.stdout
    assert f"run record in {os.path.join(out, 'norm_instance', 'seed0-quick')}" in result.stdout
    assert "is unreadable" in result.stderr
    assert "1 of 4 experiments failed (norm_group;" in result.stderr
    shutil.rmtree(broken)
    result = run("norm_comparison", "--quick", "--data-dir", shared_cifar10, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "norm_instance: already completed" in result.stdout
    assert "member 3 of 4: norm_group" in result.stdout
    for member in GROUPS["norm_comparison"]:
        run_dir = os.path.join(out, member, "seed0-quick")
        with open(os.path.join(run_dir, "status.json")) as stream:
            assert json.load(stream)["status"] == "completed"
        assert [int(r["epoch"]) for r in history(os.path.join(run_dir, "history.csv"))] == [0, 1]


def test_named_experiments_reproduce_what_produced_the_papers_numbers():
    """A buggy code path that produced a paper's number is the named experiment;
    the corrected version is one --set away."""
    from training.recipe import apply_overrides

    augmentation = EXPERIMENTS["cnn_augmentation"]
    assert augmentation.model_args == {"dropout": 0.2}  # CNN.py's shared branch
    assert apply_overrides(augmentation, ["model_args.dropout=0"]).model_args == {"dropout": 0}
    for norm in ("batch", "layer", "group", "instance"):
        recipe = EXPERIMENTS[f"norm_{norm}"]
        assert recipe.normalization.scale_bug is True
        assert recipe.val_selection == "numpy_seed0_choice"
        fixed = apply_overrides(recipe, ["normalization.scale_bug=false"])
        assert fixed.normalization.scale_bug is False
    noisy = EXPERIMENTS["noisy_labels"]
    assert noisy.epochs == 50 and noisy.augment[2]["shrink_at_edge"] is True
    assert apply_overrides(noisy, ["augment.2.shrink_at_edge=false"]).augment[2] == {
        **noisy.augment[2], "shrink_at_edge": False}
    assert "without any regularization" in EXPERIMENTS["mobilenetv2"].notes

