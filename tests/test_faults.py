"""Fault injection: every state a kill, a full disk or a damaged file can leave in a
run folder is repaired by the next run of the same command, or refused with one
line that names the file and the fix, and nothing earlier is lost.

A tiny deterministic run (paper 004's dropout CNN, 3 epochs of 32 images) is
stopped after epoch 2's backup, as a kill leaves it; each case damages one file
of a copy of that folder and runs the same recipe again in this process."""

import csv
import os
import shutil

import numpy as np
import pytest

import callbacks
from experiments.recipes import EXPERIMENTS
from training import backup, record
from training.engine import RunError, RunOptions, train
from training.recipe import apply_overrides

RECIPE = apply_overrides(EXPERIMENTS["cnn_dropout"], ["epochs=3", "train_images=32",
                                                      "batch_size=16"])
TIMING = {"seconds", "input_seconds"}


def options(out, data):
    return RunOptions(output_dir=str(out), run_id="run", data_dir=data, deterministic=True,
                      verbose=0)


def rows(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(stream)]


def weights(run_dir):
    import keras

    model = keras.models.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    return [np.asarray(w) for w in model.get_weights()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(uninterrupted run folder, folder killed after epoch 2's backup, data)."""
    from conftest import write_cifar10

    root = tmp_path_factory.mktemp("faults")
    data = write_cifar10(str(root / "data"), train_per_batch=10, test=20)
    data = os.path.dirname(data)
    train(RECIPE, options(root / "whole", data))
    save = callbacks.AtomicBackupAndRestore._save_model

    def killed_after_epoch_2(self):
        save(self)
        if self._current_epoch == 2:
            raise KeyboardInterrupt  # as a kill right after the backup

    callbacks.AtomicBackupAndRestore._save_model = killed_after_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            train(RECIPE, options(root / "killed", data))
    finally:
        callbacks.AtomicBackupAndRestore._save_model = save
    run_dir = os.path.join(root, "killed", RECIPE.name, "run")
    assert [os.path.basename(f) for f in backup.generations(os.path.join(run_dir, "backup"))] == [
        "epoch-00002", "epoch-00001"]
    assert len(rows(run_dir)) == 2
    return os.path.join(root, "whole", RECIPE.name, "run"), run_dir, data


def damaged_copy(reference, tmp_path):
    _, killed, data = reference
    run_dir = tmp_path / "out" / RECIPE.name / "run"
    shutil.copytree(killed, run_dir)
    return str(run_dir), data


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as stream:
        stream.truncate(size // 2)


def empty(path):
    open(path, "w").close()


def garbage(path):
    with open(path, "wb") as stream:
        stream.write(b"\x00\xffnot what was written\n" * 3)


def newest(run_dir, name):
    return os.path.join(run_dir, "backup", "epoch-00002", name)


def cut_last_row(run_dir):
    path = os.path.join(run_dir, "history.csv")
    with open(path, "rb") as stream:
        text = stream.read()
    with open(path, "wb") as stream:
        stream.write(text[:len(text) - 25])  # mid-number in epoch 2's row


def leave_partial(run_dir):  # killed while writing epoch 3's generation
    os.makedirs(os.path.join(run_dir, "backup", ".partial"))
    shutil.copy(newest(run_dir, backup.WEIGHTS), os.path.join(run_dir, "backup", ".partial"))
    truncate(os.path.join(run_dir, "backup", ".partial", backup.WEIGHTS))


REPAIRED = {
    "newest backup weights truncated": lambda d: truncate(newest(d, backup.WEIGHTS)),
    "newest backup weights empty": lambda d: empty(newest(d, backup.WEIGHTS)),
    "newest backup epoch empty": lambda d: empty(newest(d, backup.METADATA)),
    "newest backup epoch corrupt": lambda d: garbage(newest(d, backup.METADATA)),
    "newest backup random states corrupt": lambda d: garbage(newest(d, backup.SEEDS)),
    "a generation killed mid-write": leave_partial,
    "history row cut mid-number": cut_last_row,
    "status truncated": lambda d: truncate(os.path.join(d, "status.json")),
    "status empty": lambda d: empty(os.path.join(d, "status.json")),
    "config truncated": lambda d: truncate(os.path.join(d, "config.json")),
    "config corrupt": lambda d: garbage(os.path.join(d, "config.json")),
    "lock corrupt": lambda d: garbage(os.path.join(d, ".lock")),
    "lock empty": lambda d: empty(os.path.join(d, ".lock")),
}


@pytest.mark.parametrize("fault", list(REPAIRED))
def test_a_fault_is_repaired_by_the_same_command(reference, tmp_path, fault):
    """The run completes with each epoch's row once and the weights of the
    uninterrupted run."""
    whole = reference[0]
    run_dir, data = damaged_copy(reference, tmp_path)
    REPAIRED[fault](run_dir)
    train(RECIPE, options(tmp_path / "out", data))
    assert record.read_status(run_dir)["status"] == "completed"
    assert rows(run_dir) == rows(whole)
    for ours, theirs in zip(weights(run_dir), weights(whole)):
        np.testing.assert_array_equal(ours, theirs)
    assert not os.path.exists(os.path.join(run_dir, "backup"))


REFUSED = {
    # fault: (damage, the file the line names, the fix it gives)
    "both backups truncated": (lambda d: [truncate(f) for f in (
        newest(d, backup.WEIGHTS), os.path.join(d, "backup", "epoch-00001", backup.WEIGHTS))],
        "epoch-00001/latest.weights.h5 is damaged", "Delete {run}/backup and rerun the same command"),
    "history emptied": (lambda d: empty(os.path.join(d, "history.csv")),
                        "history.csv holds the rows of 0 epochs", "Delete {run}/backup and rerun"),
    "history corrupt": (lambda d: garbage(os.path.join(d, "history.csv")),
                        "history.csv is not a run history",
                        "Delete it and {run}/backup and rerun the same command"),
    "best checkpoint truncated": (lambda d: truncate(os.path.join(d, "best.keras")),
                                  "best.keras is damaged", "pass --run-id NAME"),
}


@pytest.mark.parametrize("fault", list(REFUSED))
def test_a_fault_that_cannot_be_repaired_is_refused_in_one_line(reference, tmp_path, fault):
    damage, named, fix = REFUSED[fault]
    run_dir, data = damaged_copy(reference, tmp_path)
    damage(run_dir)
    before = {name: open(os.path.join(run_dir, name), "rb").read()
              for name in ("history.csv", "config.json", "best.keras")}
    with pytest.raises(RunError) as refused:
        train(RECIPE, options(tmp_path / "out", data))
    message = str(refused.value)
    assert "\n" not in message and named in message, message
    assert fix.format(run=run_dir) in message, message
    for name, content in before.items():  # nothing earlier is lost
        assert open(os.path.join(run_dir, name), "rb").read() == content, name
    if "Delete" in fix:  # the fix works: the stage trains again from its first epoch
        shutil.rmtree(os.path.join(run_dir, "backup"))
        if "Delete it" in fix:
            os.remove(os.path.join(run_dir, "history.csv"))
        train(RECIPE, options(tmp_path / "out", data))
        assert [row["epoch"] for row in rows(run_dir)] == ["0", "1", "2"]


def test_a_finished_record_damaged_since_is_refused_or_rewritten(reference, tmp_path):
    """A finished run keeps no backup: a lost history row cannot be trained again,
    so the rerun says how to start over; a lost status is rewritten from the rest."""
    whole, _, data = reference
    run_dir = str(tmp_path / "out" / RECIPE.name / "run")
    shutil.copytree(whole, run_dir)
    truncate(os.path.join(run_dir, "status.json"))
    metrics = train(RECIPE, options(tmp_path / "out", data))
    assert record.read_status(run_dir)["status"] == "completed"
    assert metrics == record.read_json(os.path.join(whole, "metrics.json"))
    cut_last_row(run_dir)
    with pytest.raises(RunError) as refused:
        train(RECIPE, options(tmp_path / "out", data))
    message = str(refused.value)
    assert "history.csv holds 2 of 3 epochs' rows" in message and "--run-id NAME" in message


def test_a_deadline_stops_at_an_epoch_boundary_and_the_run_resumes(reference, tmp_path):
    """--deadline-s: no epoch starts that the median epoch says would end past the
    deadline; the run is left interrupted, and the same command finishes it as an
    uninterrupted run would have."""
    import time

    from training.engine import RunStopped

    whole = reference[0]
    run_dir, data = damaged_copy(reference, tmp_path)
    stopped = options(tmp_path / "out", data)
    stopped.deadline = time.time() + 0.01  # shorter than any epoch: epoch 3 does not start
    with pytest.raises(RunStopped, match="stopped at the deadline after epoch 2 of 3"):
        train(RECIPE, stopped)
    assert record.read_status(run_dir)["status"] == "interrupted"
    assert len(rows(run_dir)) == 2 and backup.generations(os.path.join(run_dir, "backup"))
    train(RECIPE, options(tmp_path / "out", data))
    assert rows(run_dir) == rows(whole)
    for ours, theirs in zip(weights(run_dir), weights(whole)):
        np.testing.assert_array_equal(ours, theirs)


def test_the_record_says_whether_tf32_may_run(reference):
    """config.json names the backend's TF32 setting, so a GPU run says how it computed."""
    import keras

    config = record.read_json(os.path.join(reference[0], "config.json"))
    tf32 = config["tensor_float_32"]
    assert isinstance(tf32["convolutions"], bool) and isinstance(tf32["matmul"], bool)
    if keras.backend.backend() == "tensorflow":  # TensorFlow's default: enabled
        assert tf32 == {"convolutions": True, "matmul": True}


def test_several_steps_per_call_train_the_same_steps_at_the_same_rates(reference, tmp_path):
    """--steps-per-execution 3: a rate that changes mid-epoch (after optimizer steps 5
    and 9 of 4 a epoch) falls on the same steps, and the run's history and weights
    are those of one step per call."""
    data = reference[2]
    recipe = apply_overrides(RECIPE, ["batch_size=8",
                                      'schedule={"kind": "step_iterations", "boundaries": [5, 9]}'])
    made = {}
    for steps in (1, 3):
        run = options(tmp_path / f"steps{steps}", data)
        run.steps_per_execution = steps
        train(recipe, run)
        made[steps] = os.path.join(tmp_path, f"steps{steps}", recipe.name, "run")
        assert record.read_json(os.path.join(made[steps], "config.json"))["steps_per_execution"] == steps
    # at each epoch's start (steps 0, 4, 8): before the first boundary, before it, after it
    assert [float(row["lr"]) for row in rows(made[3])] == pytest.approx([1e-3, 1e-3, 1e-4])
    assert rows(made[3]) == rows(made[1])
    for ours, theirs in zip(weights(made[3]), weights(made[1])):
        np.testing.assert_array_equal(ours, theirs)
