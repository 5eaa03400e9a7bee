"""The device path (data/device_augment.py) against the host path, the reference.

The same (seed, epoch, index) keys give the same images: bit for bit for crop,
flip, shift and Cutout on uint8 images (integer results either way); within
float32 rounding (1e-5) where the two compute in a different order: the
normalisations, the float ops, mixup. A run on the device path records its path,
resumes on it as an uninterrupted run, and learns as the host path does."""

import csv
import os

import keras
import numpy as np
import pytest

import callbacks
from data.augment import Augmenter
from data.device_augment import DeviceAugment, DeviceBatches, choose_path, unsupported
from data.mixing import Mixer
from data.normalize import Normalizer
from data.pipeline import CifarBatches
from experiments.recipes import EXPERIMENTS
from training import record
from training.engine import RunError, RunOptions, _augment_path, train
from training.recipe import apply_overrides

UINT8_CHAINS = {
    "crop": [{"op": "crop", "padding": 4}],
    "crop fill": [{"op": "crop", "padding": 2, "fill": 128}],
    "hflip": [{"op": "hflip"}],
    "vflip": [{"op": "vflip", "p": 0.3}],
    "shift": [{"op": "shift", "fraction": 0.125}],
    "cutout": [{"op": "cutout"}],
    "cutout inside": [{"op": "cutout", "size": 8, "low": -4, "high": 30, "shrink_at_edge": False}],
    "paper 004 chain": [{"op": "shift", "fraction": 0.1}, {"op": "hflip"}, {"op": "cutout"}],
    "torchvision chain": [{"op": "crop", "padding": 4}, {"op": "hflip"}],
}
FLOAT_CHAIN = [{"op": "float"}, {"op": "crop", "padding": 4}, {"op": "hflip"},
               {"op": "grayscale", "p": 0.3}, {"op": "autocontrast", "p": 0.5},
               {"op": "shift"}, {"op": "cutout"}]


def images(count=48, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, count))


def device_inputs(batch):
    return {key: keras.ops.convert_to_tensor(value) for key, value in batch.items()}


def both(spec, normalizer, mix=None, epoch=2, index=1, batch_size=16, training=True):
    """(host batch, device inputs and labels, DeviceAugment) for one key."""
    x, y = images()
    augment = Augmenter(spec)
    host = CifarBatches(x, y, 10, batch_size, augment=augment if training else None,
                        normalize=normalizer, mix=mix if training else None, shuffle=training,
                        seed=5)
    device = DeviceBatches(x, y, 10, batch_size, augment=augment, mix=mix, shuffle=training,
                           seed=5, training=training)
    host_batch = host.batch(epoch, index) if training else host.batch(0, index)
    inputs, labels = device.batch(epoch, index) if training else device.batch(0, index)
    return host_batch, (inputs, labels), DeviceAugment(augment.ops, normalizer,
                                                       mix.kind if mix else None)


@pytest.mark.parametrize("chain", list(UINT8_CHAINS))
def test_the_same_keys_give_the_same_uint8_images(chain):
    x, _ = images()
    augment = Augmenter(UINT8_CHAINS[chain])
    device = DeviceBatches(x, np.zeros(len(x), int), 10, 16, augment=augment, shuffle=True, seed=5)
    for epoch, index in ((0, 0), (3, 2)):
        inputs, _ = device.batch(epoch, index)
        picked = device.order(epoch)[index * 16:(index + 1) * 16]
        expected = augment(x[picked], np.random.default_rng([5, epoch, 1, index]))
        layer = DeviceAugment(augment.ops, Normalizer("scale"))
        got = keras.ops.convert_to_numpy(layer.augment(device_inputs(inputs)))
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        assert not np.array_equal(got, x[picked])  # the chain did something


@pytest.mark.parametrize("normalizer", [
    Normalizer("scale"), Normalizer("channel", "kuangliu"), Normalizer("per_image"),
    Normalizer("per_image", stage="after"), Normalizer("per_pixel_mean", stage="before"),
], ids=["scale", "channel", "per_image before", "per_image after", "per_pixel_mean before"])
def test_normalised_batches_match_within_float32_rounding(normalizer):
    normalizer.fit(images()[0])
    spec = UINT8_CHAINS["paper 004 chain"] if normalizer.stage == "before" else FLOAT_CHAIN
    (host_x, host_y), (inputs, labels), layer = both(spec, normalizer)
    if normalizer.stage == "before":  # as training_batches does: the whole array first
        x, y = images()
        batches = CifarBatches(normalizer(x), y, 10, 16, augment=Augmenter(spec), shuffle=True,
                               seed=5)
        host_x, host_y = batches.batch(2, 1)
    got = keras.ops.convert_to_numpy(layer(device_inputs(inputs), training=True))
    np.testing.assert_allclose(got, host_x, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, host_y)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_batches_match_and_labels_are_the_host_labels(kind):
    mix = Mixer(kind=kind, alpha=1.0, p=1.0)
    normalizer = Normalizer("channel", "kuangliu")
    (host_x, host_y), (inputs, labels), layer = both(UINT8_CHAINS["torchvision chain"],
                                                     normalizer, mix=mix)
    assert not np.array_equal(inputs["mix_partner"], np.arange(16))
    got = keras.ops.convert_to_numpy(layer(device_inputs(inputs), training=True))
    np.testing.assert_allclose(got, host_x, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels, host_y)


def test_validation_batches_pass_through_unchanged():
    mix = Mixer(kind="mixup")
    (host_x, host_y), (inputs, labels), layer = both(
        UINT8_CHAINS["paper 004 chain"], Normalizer("scale"), mix=mix, training=False)
    got = layer(device_inputs(inputs), training=False)  # fit's validation calls it so
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), host_x)
    np.testing.assert_array_equal(labels, host_y)


def test_the_path_is_chosen_and_refused_with_the_reason():
    deep, auto_augment = EXPERIMENTS["resnet_deep"], EXPERIMENTS["resnet5m_row6"]
    assert choose_path("auto", deep, has_gpu=False) == "host"
    assert choose_path("auto", deep, has_gpu=True) == "device"
    assert choose_path("auto", auto_augment, has_gpu=True) == "host"
    assert choose_path("device", EXPERIMENTS["se_resnet_mixup"], has_gpu=False) == "device"
    assert "autoaugment" in unsupported(auto_augment)
    assert "Pillow" in unsupported(EXPERIMENTS["modified_resnet"])
    with pytest.raises(ValueError, match="resnet5m_row6 cannot augment on the device.*"
                                         "autoaugment.*--augment-on host"):
        choose_path("device", auto_augment, has_gpu=True)
    with pytest.raises(ValueError, match="one device"):
        choose_path("device", deep, has_gpu=True, distribute="mirrored")


# ------------------------------------------------------------------ runs

RECIPE = apply_overrides(EXPERIMENTS["cnn_augmentation"], ["epochs=3", "train_images=64",
                                                           "batch_size=16"])
TIMING = {"seconds", "input_seconds"}


def history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as stream:
        return [{k: float(v) for k, v in row.items() if k not in TIMING}
                for row in csv.DictReader(stream)]


def run_options(out, data, path, run_id="run"):
    return RunOptions(output_dir=str(out), run_id=run_id, data_dir=data, deterministic=True,
                      verbose=0, augment_on=path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Folders of the same recipe trained on the host path, the device path, and the
    device path killed after epoch 2's backup and resumed."""
    from conftest import write_cifar10

    root = tmp_path_factory.mktemp("device-path")
    data = os.path.dirname(write_cifar10(str(root / "data"), train_per_batch=14, test=32))
    train(RECIPE, run_options(root, data, "host", "host"))
    train(RECIPE, run_options(root, data, "device", "device"))
    save = callbacks.AtomicBackupAndRestore._save_model

    def killed_after_epoch_2(self):
        save(self)
        if self._current_epoch == 2:
            raise KeyboardInterrupt

    callbacks.AtomicBackupAndRestore._save_model = killed_after_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            train(RECIPE, run_options(root, data, "device", "resumed"))
    finally:
        callbacks.AtomicBackupAndRestore._save_model = save
    train(RECIPE, run_options(root, data, "auto", "resumed"))  # auto keeps the device path
    folder = os.path.join(root, RECIPE.name)
    return {name: os.path.join(folder, name) for name in ("host", "device", "resumed")}, data


def test_a_resumed_device_run_equals_an_uninterrupted_one(runs):
    folders, _ = runs
    assert history(folders["resumed"]) == history(folders["device"])
    saved = [keras.models.load_model(os.path.join(folders[name], "best.keras"), compile=False)
             for name in ("device", "resumed")]
    for a, b in zip(*(model.get_weights() for model in saved)):
        np.testing.assert_array_equal(a, b)


def test_the_record_says_which_path_trained(runs):
    folders, _ = runs
    assert record.read_json(os.path.join(folders["host"], "config.json"))["augment_on"] == "host"
    for name in ("device", "resumed"):
        assert record.read_json(os.path.join(folders[name], "config.json"))["augment_on"] == \
            "device"
    # best.keras and model.keras hold the network alone, as on the host path
    model = keras.models.load_model(os.path.join(folders["device"], "model.keras"))
    assert [layer.name for layer in model.layers if "augment" in layer.name] == []


def test_the_device_path_learns_as_the_host_path(runs):
    """Scale normalisation: both paths feed bit-identical images, so the runs differ
    only in how the backend compiles the two steps (float reassociation): over three
    epochs the losses stay within 1% and the accuracies within two images."""
    folders, _ = runs
    host, device = history(folders["host"]), history(folders["device"])
    assert [row["epoch"] for row in host] == [row["epoch"] for row in device]
    for a, b in zip(host, device):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.01)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.01)
        assert abs(a["accuracy"] - b["accuracy"]) <= 2 / 64 + 1e-6
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 2 / 32 + 1e-6


def test_a_run_keeps_the_path_it_began_on(tmp_path):
    config = {"device": "CPU (2 cores)"}
    saved = {"augment_on": "device"}  # the recorded config of the run that resumes
    assert _augment_path(RECIPE, RunOptions(augment_on="auto"), str(tmp_path), saved,
                         config) == "device"
    assert config["augment_on"] == "device"
    with pytest.raises(RunError, match="began on the device augmentation path.*"
                                       "--augment-on device"):
        _augment_path(RECIPE, RunOptions(augment_on="host"), str(tmp_path), saved, config)
    # A new run, or one whose record could not be read, goes as --augment-on says.
    assert _augment_path(RECIPE, RunOptions(augment_on="auto"), str(tmp_path), None,
                         config) == "host"
