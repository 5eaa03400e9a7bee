"""Shared fixtures: tiny CIFAR copies in the real pickle layout, written to a temp dir."""

import atexit
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _configured_backend():
    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
    try:
        with open(path) as stream:
            return json.load(stream).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


# Every child process runs on this process's backend, and Keras keeps its config in
# a temp dir: without one, the first child (one started with KERAS_BACKEND=jax, say)
# writes its backend into ~/.keras/keras.json as the default for all that follow.
os.environ.setdefault("KERAS_BACKEND", _configured_backend())
if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller; workers inherit both
    os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="cifar-repro-tests-keras-")
    atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], True)


def synthetic_images(labels, rng):
    """Learnable images: each class has its own mean colour, plus noise."""
    palette = np.linspace(20, 235, 10)
    base = np.stack([palette[labels % 10], palette[(labels * 3) % 10], palette[(labels * 7) % 10]], -1)
    noise = rng.normal(0, 25, size=(len(labels), 32, 32, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _rows(images):
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def write_cifar10(root, train_per_batch=40, test=40, seed=0):
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [train_per_batch] * 5 + [test]
    for name, size in zip(names, sizes):
        labels = rng.integers(0, 10, size)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(),
                 b"data": _rows(synthetic_images(labels, rng)),
                 b"filenames": [b"x.png"] * size}
        with open(os.path.join(folder, name), "wb") as stream:
            pickle.dump(batch, stream)
    with open(os.path.join(folder, "batches.meta"), "wb") as stream:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, stream)
    return folder


def write_cifar100(root, train=60, test=30, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, size in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, size)
        batch = {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                 b"data": _rows(synthetic_images(fine, rng)), b"filenames": [b"x.png"] * size}
        with open(os.path.join(folder, name), "wb") as stream:
            pickle.dump(batch, stream)
    return folder


def make_tar(folder, path):
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=os.path.basename(folder))
    return path


@pytest.fixture
def cifar10_dir(tmp_path):
    write_cifar10(str(tmp_path / "data"))
    return str(tmp_path / "data")


@pytest.fixture(scope="session")
def shared_cifar10(tmp_path_factory):
    """One tiny CIFAR-10 copy for the (slower) end-to-end runs."""
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(str(root))
    return str(root)
