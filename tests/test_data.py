import os
import pickle

import numpy as np
import pytest

from conftest import make_tar, write_cifar10, write_cifar100
from data.cifar import DataError, load_cifar, split_validation
from data.normalize import CHANNEL_STATS, Normalizer


def test_folder_holding_the_release(cifar10_dir):
    data = load_cifar("cifar10", cifar10_dir)
    assert data.x_train.shape == (200, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (40, 32, 32, 3)
    assert data.y_train.shape == (200,) and data.y_train.max() < 10
    assert data.num_classes == 10


def test_release_folder_itself_and_tar_give_identical_arrays(cifar10_dir, tmp_path):
    folder = os.path.join(cifar10_dir, "cifar-10-batches-py")
    tar = make_tar(folder, str(tmp_path / "cifar-10-python.tar.gz"))
    a, b, c = (load_cifar("cifar10", p) for p in (cifar10_dir, folder, tar))
    for other in (b, c):
        np.testing.assert_array_equal(a.x_train, other.x_train)
        np.testing.assert_array_equal(a.y_test, other.y_test)


def test_pixel_layout_is_channel_first_rows(tmp_path):
    folder = write_cifar10(str(tmp_path), train_per_batch=2, test=2)
    with open(os.path.join(folder, "data_batch_1"), "rb") as stream:
        raw = pickle.load(stream, encoding="bytes")
    data = load_cifar("cifar10", str(tmp_path))
    row = raw[b"data"][0]
    assert data.x_train[0, 0, 0, 0] == row[0]  # red plane first
    assert data.x_train[0, 0, 0, 1] == row[1024]  # then green
    assert data.x_train[0, 0, 1, 0] == row[1]


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100(str(tmp_path))
    fine = load_cifar("cifar100", str(tmp_path), "fine")
    coarse = load_cifar("cifar100", str(tmp_path), "coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    np.testing.assert_array_equal(fine.y_train // 5, coarse.y_train)
    tar = make_tar(os.path.join(str(tmp_path), "cifar-100-python"), str(tmp_path / "c100.tar.gz"))
    np.testing.assert_array_equal(load_cifar("cifar100", tar).x_test, fine.x_test)


def test_environment_variable(cifar10_dir, monkeypatch):
    monkeypatch.setenv("CIFAR_DATA_DIR", cifar10_dir)
    assert load_cifar("cifar10").source.endswith("cifar-10-batches-py")


def test_missing_directory_says_what_to_download(tmp_path):
    with pytest.raises(DataError, match="does not exist.*cifar-10-python.tar.gz.*--data-dir"):
        load_cifar("cifar10", str(tmp_path / "nowhere"))


def test_folder_without_cifar(tmp_path):
    with pytest.raises(DataError, match="No CIFAR-10 found.*cifar-10-batches-py"):
        load_cifar("cifar10", str(tmp_path))


def test_cifar100_copy_given_for_cifar10(tmp_path):
    write_cifar100(str(tmp_path))
    with pytest.raises(DataError, match="holds CIFAR-100, but this experiment trains on CIFAR-10"):
        load_cifar("cifar10", str(tmp_path))


def keep_first(path, fraction):
    """Truncates a file, as an interrupted download or copy would."""
    with open(path, "rb") as stream:
        raw = stream.read()
    with open(path, "wb") as stream:
        stream.write(raw[: int(len(raw) * fraction)])


def test_corrupt_batch_is_named(cifar10_dir):
    keep_first(os.path.join(cifar10_dir, "cifar-10-batches-py", "data_batch_3"), 0.5)
    with pytest.raises(DataError, match="data_batch_3.*corrupt or truncated"):
        load_cifar("cifar10", cifar10_dir)


def test_missing_batch_is_named(cifar10_dir):
    os.remove(os.path.join(cifar10_dir, "cifar-10-batches-py", "test_batch"))
    with pytest.raises(DataError, match="test_batch is missing"):
        load_cifar("cifar10", cifar10_dir)


def test_truncated_archive(cifar10_dir, tmp_path):
    tar = make_tar(os.path.join(cifar10_dir, "cifar-10-batches-py"), str(tmp_path / "c.tar.gz"))
    keep_first(tar, 0.33)
    with pytest.raises(DataError, match="c.tar.gz"):
        load_cifar("cifar10", tar)


def test_a_file_that_is_no_archive_gets_a_one_line_message(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    with pytest.raises(DataError) as raised:
        load_cifar("cifar10", str(path))
    message = str(raised.value)
    assert "\n" not in message and "is not a readable .tar.gz" in message
    assert "Download it again" in message


@pytest.mark.parametrize("field, value, message", [
    (b"data", np.zeros((4, 100), np.uint8), "3072"),
    (b"labels", [0, 1, 2, 99], r"\[0, 9\]"),
    (b"labels", [0, 1], "4 images but 2 labels"),
])
def test_wrong_shapes_and_labels(tmp_path, field, value, message):
    folder = write_cifar10(str(tmp_path), train_per_batch=4, test=4)
    path = os.path.join(folder, "data_batch_2")
    with open(path, "rb") as stream:
        batch = pickle.load(stream, encoding="bytes")
    batch[field] = value
    with open(path, "wb") as stream:
        pickle.dump(batch, stream)
    with pytest.raises(DataError, match=message):
        load_cifar("cifar10", str(tmp_path))


def test_validation_split_is_seeded_and_disjoint(cifar10_dir):
    data = load_cifar("cifar10", cifar10_dir)
    x = np.arange(len(data.x_train))
    (kept, _), (held, _) = split_validation(x, data.y_train, 50, seed=3)
    (kept2, _), (held2, _) = split_validation(x, data.y_train, 50, seed=3)
    (_, _), (held3, _) = split_validation(x, data.y_train, 50, seed=4)
    assert len(held) == 50 and len(kept) == 150 and not set(held) & set(kept)
    np.testing.assert_array_equal(held, held2)
    assert not np.array_equal(held, held3)
    with pytest.raises(DataError, match="--val-split"):
        split_validation(x, data.y_train, 200, seed=0)


def test_normalizations():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    scaled = Normalizer("scale")(x)
    np.testing.assert_allclose(scaled, x / 255.0, rtol=1e-6)
    mean, std = CHANNEL_STATS["kuangliu"]
    np.testing.assert_allclose(Normalizer("channel", "kuangliu")(x),
                               (x / 255.0 - mean) / np.asarray(std), rtol=1e-4, atol=1e-5)
    per_image = Normalizer("per_image")(x)
    np.testing.assert_allclose(per_image.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(per_image.std(axis=(1, 2, 3)), 1, atol=1e-4)
    per_pixel = Normalizer("per_pixel").fit(x)
    out = per_pixel(x)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-3)
    # Paper 004's bug: statistics of the /255 array applied to raw 0-255 values.
    buggy = Normalizer("per_pixel", scale_bug=True).fit(x)(x)
    m, s = (x / 255.0).mean(axis=0), (x / 255.0).std(axis=0)
    np.testing.assert_allclose(buggy, (x - m) / s, rtol=1e-4)
    assert np.abs(buggy).mean() > 100 * np.abs(out).mean()
    np.testing.assert_allclose(Normalizer("per_pixel_mean").fit(x)(x).mean(axis=0), 0, atol=1e-6)
    half = Normalizer("channel", "half")
    np.testing.assert_allclose(half.pad_value(), [-1, -1, -1])


def test_norm_study_validation_split_is_the_studys_own():
    """np.random.seed(0); np.random.choice(range(50000), 5000, replace=False), then
    np.delete: the same held-out images, whatever the run's seed, and the training
    images in their order."""
    x = np.arange(50000)[:, None]
    y = np.arange(50000) % 10
    np.random.seed(0)
    chosen = np.random.choice(range(50000), 5000, replace=False)
    expected_train = np.delete(x, chosen, 0)
    for seed in (0, 7):
        (kept, _), (held, _) = split_validation(x, y, 5000, seed, "numpy_seed0_choice")
        np.testing.assert_array_equal(np.sort(held[:, 0]), np.sort(chosen))
        np.testing.assert_array_equal(kept, expected_train)
    (_, _), (by_run_seed, _) = split_validation(x, y, 5000, 0)
    assert not np.array_equal(np.sort(by_run_seed[:, 0]), np.sort(chosen))
