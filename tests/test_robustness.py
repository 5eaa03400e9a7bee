"""Nothing lost: determinism, kill-and-resume against an uninterrupted run, NaN,
a full disk, an unwritable output folder, plateau counters across a resume."""

import csv
import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "experiments", "run.py")
# Dropout makes the check strict: its random masks must also continue where they were.
DETERMINISTIC = ["cnn_dropout", "--epochs", "8", "--set", "train_images=64", "--batch-size", "32",
                 "--deterministic"]
TIMING = {"seconds", "input_seconds"}


def run(*args, preexec_fn=None):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          timeout=900, preexec_fn=preexec_fn)


def rows(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(stream)]


def status(run_dir):
    with open(os.path.join(run_dir, "status.json")) as stream:
        return json.load(stream)


@pytest.mark.slow
def test_deterministic_runs_match_and_a_killed_run_matches_an_uninterrupted_one(shared_cifar10, tmp_path):
    out = str(tmp_path)
    common = [*DETERMINISTIC, "--data-dir", shared_cifar10, "--output-dir", out]
    # Threads that build batches ahead (Keras's OrderedEnqueuer, restarted each
    # epoch) change nothing: each batch is a function of (seed, epoch, index).
    for run_id, threads in (("first", "1"), ("second", "3")):
        result = run(*common, "--run-id", run_id, "--input-threads", threads)
        assert result.returncode == 0, result.stderr[-3000:]
    first = os.path.join(out, "cnn_dropout", "first")
    assert rows(first) == rows(os.path.join(out, "cnn_dropout", "second"))
    assert len(rows(first)) == 8

    # Killed twice at random moments, then finished: the same history, row for row.
    killed = os.path.join(out, "cnn_dropout", "killed")
    history = os.path.join(killed, "history.csv")
    chooser = random.Random(0)
    for _ in range(2):
        process = subprocess.Popen([sys.executable, RUN, *common, "--run-id", "killed",
                                    "--input-threads", "2"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = len(rows(killed)) if os.path.exists(history) else 0
        target = done + 1
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if os.path.exists(history) and len(rows(killed)) >= target:
                break
            time.sleep(0.05)
        time.sleep(chooser.uniform(0.0, 0.5))  # somewhere inside the next epoch
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = run(*common, "--run-id", "killed", "--input-threads", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(killed) == rows(first)
    with open(os.path.join(first, "metrics.json")) as a, open(os.path.join(killed, "metrics.json")) as b:
        first_metrics, killed_metrics = json.load(a), json.load(b)
    for key in ("final_val_accuracy", "best_val_accuracy", "best_epoch", "final_val_loss"):
        assert killed_metrics[key] == first_metrics[key], key
    import keras

    import models  # noqa: F401  registers the suite's layers and Network for load_model

    weights = [keras.models.load_model(os.path.join(d, "best.keras")).get_weights() for d in (first, killed)]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_marks_the_run_failed_with_the_epoch(shared_cifar10, tmp_path):
    # 1e300 is inf in float32: the first update makes the weights inf and the loss
    # NaN on any CPU (1e30 left the loss finite, near 1e29, on an AVX-512 machine).
    result = run("cnn_baseline", "--quick", "--set", "optimizer.learning_rate=1e300",
                 "--data-dir", shared_cifar10, "--output-dir", str(tmp_path))
    assert result.returncode == 1
    assert "NaN in epoch 1" in result.stderr and "Lower the learning rate" in result.stderr
    state = status(os.path.join(str(tmp_path), "cnn_baseline", "seed0-quick"))
    assert state["status"] == "failed" and "NaN in epoch 1" in state["reason"]


def test_full_disk_while_saving_fails_clearly(shared_cifar10, tmp_path):
    """A file-size limit makes every write past 64 KB fail as a full disk does: the
    small record files fit, the checkpoint does not."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = run("cnn_baseline", "--quick", "--data-dir", shared_cifar10,
                 "--output-dir", str(tmp_path), preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "could not write" in result.stderr and "rerun the same command" in result.stderr
    assert "in epoch 1." in result.stderr  # the first epoch's checkpoint, counted from 1
    assert "Traceback" not in result.stderr
    run_dir = os.path.join(str(tmp_path), "cnn_baseline", "seed0-quick")
    assert status(run_dir)["status"] == "failed"
    assert not [name for name in os.listdir(run_dir) if "partial" in name]


def test_a_failed_save_names_the_epoch_in_progress(shared_cifar10, tmp_path, monkeypatch):
    """The backup is written after history.csv's row, so the epoch in progress is
    not the one after the last logged: a full disk while backing up epoch 2 says 2."""
    from callbacks import AtomicBackupAndRestore
    from experiments.recipes import EXPERIMENTS
    from training.engine import RunError, RunOptions, train

    original = AtomicBackupAndRestore.on_epoch_end

    def full_disk_in_the_second_epoch(self, epoch, logs=None):
        if epoch == 1:
            raise OSError(errno.ENOSPC, "No space left on device", "backup")
        return original(self, epoch, logs)

    monkeypatch.setattr(AtomicBackupAndRestore, "on_epoch_end", full_disk_in_the_second_epoch)
    options = RunOptions(output_dir=str(tmp_path), data_dir=shared_cifar10, quick=True, verbose=0)
    with pytest.raises(RunError, match=r"in epoch 2\. The files written before are intact"):
        train(EXPERIMENTS["cnn_baseline"], options)
    run_dir = os.path.join(str(tmp_path), "cnn_baseline", "seed0-quick")
    assert len(rows(run_dir)) == 2  # epoch 2's row was logged before its backup failed
    assert "in epoch 2" in status(run_dir)["reason"]


def test_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import keras

    from callbacks import AtomicModelCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = str(tmp_path / "best.keras")
    checkpoint = AtomicModelCheckpoint(path, monitor="val_accuracy", mode="max", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    before = open(path, "rb").read()

    def full_disk(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as stream:
            stream.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", filepath)

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.on_epoch_end(1, {"val_accuracy": 0.9})
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["best.keras"]


def test_unwritable_output_folder_is_named(shared_cifar10, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run("cnn_baseline", "--quick", "--data-dir", shared_cifar10,
                 "--output-dir", str(blocker / "runs"))
    assert result.returncode == 1
    assert "Cannot write the run record" in result.stderr and "--output-dir" in result.stderr


def test_plateau_counters_survive_a_resume(tmp_path):
    """torch-style ReduceLROnPlateau: a new callback (the resumed process) carries on
    with the best value, bad-epoch count and cooldown of the epoch it resumes at."""
    import keras

    from callbacks.schedules import TorchReduceLROnPlateau

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.001), loss="mse")
    state_dir = str(tmp_path / "backup")
    from training.schedules import Plateau

    first = TorchReduceLROnPlateau(Plateau(patience=5, monitor="val_loss"), state_dir=state_dir)
    first.set_model(model)
    first.on_train_begin()
    losses = [1.0, 0.9, 0.95, 0.97, 0.99]
    for epoch, loss in enumerate(losses):
        first.on_epoch_end(epoch, {"val_loss": loss, "learning_rate": 0.001})
    resumed = TorchReduceLROnPlateau(Plateau(patience=5, monitor="val_loss"), state_dir=state_dir)
    resumed.set_model(model)
    resumed.on_train_begin()
    resumed.on_epoch_begin(5)  # training resumes after 5 epochs
    assert (resumed.best, resumed.wait) == (pytest.approx(0.9), first.wait) and first.wait == 3


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one
def test_ctrl_c_that_python_drops_still_stops_training():
    """A SIGINT whose KeyboardInterrupt lands in a finalizer is printed as ignored and
    dropped by Python; InterruptGuard (as the engine enters it around fit) still stops
    training at the next batch, and puts Python's handler back."""
    import keras

    from callbacks import InterruptGuard

    class DroppedInterrupt:
        def __del__(self):  # the handler runs in here, so its exception is "ignored"
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass

    class Batches(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.started = []

        def on_train_batch_begin(self, batch, logs=None):
            self.started.append(batch)

        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                DroppedInterrupt()  # collected at once

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 4), "float32"), np.zeros((8, 2), "float32")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        unguarded = Batches()  # Python alone: the interrupt is lost, every batch runs
        model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[unguarded])
        assert unguarded.started == list(range(8))
        guard, guarded = InterruptGuard(), Batches()
        with pytest.raises(KeyboardInterrupt), guard:
            model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[guard, guarded])
        assert guarded.started == [0, 1, 2]  # stopped as batch 3 began
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
