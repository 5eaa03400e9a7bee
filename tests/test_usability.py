"""After training, through the command line in subprocesses: one writer per run
folder, self-contained models (evaluate, predict, export), TensorBoard logs, and
options that do what they say."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from training import record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "experiments", "run.py")


def script(name, *args, env=None, cwd=None, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def epochs_in(path):
    with open(path, newline="") as stream:
        return [int(row["epoch"]) for row in csv.DictReader(stream)]


@pytest.fixture(scope="module")
def quick_run(shared_cifar10, tmp_path_factory):
    """One finished quick run (held-out validation, TensorBoard on) for the checks below."""
    out = str(tmp_path_factory.mktemp("runs"))
    result = script("run.py", "resnet20", "--quick", "--val-split", "64", "--tensorboard",
                    "--data-dir", shared_cifar10, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "resnet20", "seed0-quick"), result


def test_a_second_process_on_a_run_id_is_refused_and_the_first_finishes(shared_cifar10, tmp_path):
    out = str(tmp_path / "runs")
    run_dir = os.path.join(out, "cnn_baseline", "seed0")
    command = [sys.executable, RUN, "cnn_baseline", "--epochs", "100", "--set", "train_images=64",
               "--batch-size", "32", "--data-dir", shared_cifar10, "--output-dir", out]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    history = os.path.join(run_dir, "history.csv")
    deadline = time.time() + 300
    while not (os.path.exists(history) and epochs_in(history)):
        assert first.poll() is None and time.time() < deadline, "the first run ended early"
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    still_running = first.poll() is None
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output[-3000:]
    if still_running:  # refused while the first held the folder
        assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"run {run_dir} is in use by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    assert epochs_in(history) == list(range(100))
    assert record.read_status(run_dir)["status"] == "completed"


def test_a_held_lock_refuses_at_once_and_a_stale_one_does_not_block(shared_cifar10, tmp_path):
    out = str(tmp_path / "runs")
    run_dir = os.path.join(out, "cnn_baseline", "seed0-quick")
    args = ("run.py", "cnn_baseline", "--quick", "--data-dir", shared_cifar10, "--output-dir", out)
    with record.FolderLock(run_dir, "run"):
        refused = script(*args)
    assert refused.returncode == 1 and f"is in use by process {os.getpid()}" in refused.stderr
    assert os.listdir(run_dir) == [".lock"]  # nothing else written
    # A lock file left by a killed process (its pid in it) blocks nothing.
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(os.path.join(run_dir, ".lock"), "w") as stream:
        stream.write(f"{killed.pid}\n")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    result = script(*args)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_dead_runs_status_reads_interrupted(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    record.write_status(str(tmp_path), "running")
    saved = record.read_json(os.path.join(tmp_path, "status.json"))
    record.write_json(os.path.join(tmp_path, "status.json"), {**saved, "pid": process.pid})
    status = record.read_status(str(tmp_path))
    assert status["status"] == "interrupted" and "rerun the same command" in status["reason"]
    record.write_status(str(tmp_path), "running")  # this process: alive
    assert record.read_status(str(tmp_path))["status"] == "running"


def test_a_history_with_repeated_rows_is_repaired_and_a_foreign_one_refused(shared_cifar10,
                                                                             tmp_path):
    out = str(tmp_path / "runs")
    args = ("run.py", "cnn_baseline", "--epochs", "4", "--set", "train_images=64",
            "--data-dir", shared_cifar10, "--output-dir", out)
    run_dir = os.path.join(out, "cnn_baseline", "seed0")
    history = os.path.join(run_dir, "history.csv")
    process = subprocess.Popen([sys.executable, RUN, *args[1:]], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (os.path.exists(history) and len(epochs_in(history)) >= 2):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(history) as stream:
        lines = stream.read().splitlines()
    with open(history, "w") as stream:  # two writers' leftovers: a second header, epoch 0 again
        stream.write("\n".join(lines + [lines[0], lines[1]]) + "\n")
    result = script(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_in(history) == [0, 1, 2, 3]
    # A file that is no run history at all: a message, never a traceback.
    shutil_dir = os.path.join(out, "cnn_baseline", "seed1")
    os.makedirs(os.path.join(shutil_dir, "backup"))
    with open(os.path.join(shutil_dir, "history.csv"), "w") as stream:
        stream.write("something,else\n1,2\n")
    with open(os.path.join(shutil_dir, "backup", "training_metadata.json"), "w") as stream:
        json.dump({"epoch": 1}, stream)
    record.write_json(os.path.join(shutil_dir, "config.json"), {
        **record.read_json(os.path.join(run_dir, "config.json")), "seed": 1})
    foreign = script(*args, "--seed", "1")
    assert foreign.returncode == 1 and "not a run history" in foreign.stderr
    assert "Traceback" not in foreign.stderr


def test_model_keras_predicts_raw_pixels_anywhere(quick_run, shared_cifar10, tmp_path):
    """model.keras loads in a fresh interpreter outside the repository with no import
    of it, and gives on raw uint8 images the logits the suite's own pipeline gives
    (best.keras on normalised images); best.keras loads after `import cifar_repro`."""
    run_dir, _ = quick_run
    from data.cifar import load_cifar
    from experiments.recipes import EXPERIMENTS
    from training.engine import RunOptions, prepare_data

    recipe = EXPERIMENTS["resnet20"]
    images = load_cifar("cifar10", shared_cifar10).x_test[:8]
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, numpy as np, keras\n"
            f"model = keras.saving.load_model({os.path.join(run_dir, 'model.keras')!r})\n"
            f"print(repr(model.predict(np.load({str(tmp_path / 'images.npy')!r}), verbose=0).tolist()))\n"
            "print(sorted(m for m in ('models', 'training', 'cifar_repro') if m in sys.modules))")
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=str(tmp_path), env={k: v for k, v in os.environ.items()
                                                   if k != "PYTHONPATH"}, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    lines = fresh.stdout.strip().splitlines()
    logits, imported = np.array(eval(lines[-2])), lines[-1]
    assert imported == "[]"
    config = record.read_json(os.path.join(run_dir, "config.json"))
    options = RunOptions(seed=config["seed"], data_dir=shared_cifar10, quick=True,
                         quick_keeps=("val_split",))
    _, (x_train, _), _, _ = prepare_data(recipe.__class__.from_dict(config["recipe"]), options)
    normalizer = recipe.normalization.build().fit(x_train)
    code = ("import numpy as np, keras, cifar_repro\n"
            f"model = keras.saving.load_model({os.path.join(run_dir, 'best.keras')!r}, compile=False)\n"
            f"print(repr(model.predict(np.load({str(tmp_path / 'normal.npy')!r}), verbose=0).tolist()))")
    np.save(tmp_path / "normal.npy", normalizer(images))
    suite = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert suite.returncode == 0, suite.stderr[-3000:]
    expected = np.array(eval(suite.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()


def test_evaluate_predict_and_export_a_quick_run(quick_run, shared_cifar10, tmp_path):
    run_dir, _ = quick_run
    evaluated = script("evaluate.py", run_dir, "--data-dir", shared_cifar10)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = record.read_json(os.path.join(run_dir, "evaluation.json"))
    confusion = np.array(result["confusion_matrix"])
    assert confusion.sum() == result["test_images"] == 40
    assert result["top1_accuracy"] == pytest.approx(np.trace(confusion) / 40)
    assert result["top1_accuracy"] <= result["top5_accuracy"] <= 1
    assert len(result["per_class_accuracy"]) == 10 and result["class_names"][3] == "cat"
    assert os.path.getsize(os.path.join(run_dir, "confusion_matrix.png")) > 1000
    from PIL import Image

    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)).save(big)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small)
    predicted = script("predict.py", run_dir, str(big), str(small), "--top", "3")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = [line for line in predicted.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 2 and all(line.count("%") == 3 for line in lines)
    scored = lines[0].split(": ", 1)[1].split(" (")[0]  # before the note of what was done
    shares = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in scored.split(", ")]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.1
    # Each line says what was done to its image; a square 32x32 RGB one needs nothing.
    assert lines[0].endswith("(cropped from 200x300 to its centre 200x200; resized from "
                             "200x200 to 32x32)") and lines[1].endswith("%")
    bad = script("predict.py", run_dir, os.path.join(run_dir, "config.json"))
    assert bad.returncode == 2 and "not an image" in bad.stderr and "Traceback" not in bad.stderr
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(gray)
    mixed = script("predict.py", run_dir, str(gray), os.path.join(run_dir, "config.json"))
    assert mixed.returncode == 1 and "Traceback" not in mixed.stderr, mixed.stderr[-2000:]
    assert mixed.stdout.strip().splitlines()[-1].endswith(
        "(converted from L to RGB; resized from 64x64 to 32x32)")
    assert "1 of 2 files were not images: " + os.path.join(run_dir, "config.json") in mixed.stderr
    # From another backend: the SavedModel is written by a TensorFlow child process.
    other = "jax" if os.environ["KERAS_BACKEND"] != "jax" else "torch"
    exported = script("export.py", run_dir, "--format", "saved_model", "--out",
                      str(tmp_path / "served"), env={"KERAS_BACKEND": other})
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "cudart_stub" not in exported.stderr
    assert os.path.exists(tmp_path / "served" / "saved_model.pb")
    onnx = script("export.py", run_dir, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert onnx.returncode == 0 or "install" in onnx.stderr, onnx.stderr[-2000:]


def read_only(folder):
    """Makes `folder` unwritable, for root too (the immutable flag) where the file
    system allows it, else by its mode; returns the undo, or skips."""
    ways = ((lambda: subprocess.run(["chattr", "+i", folder], check=True, capture_output=True),
             lambda: subprocess.run(["chattr", "-i", folder], capture_output=True)),
            (lambda: os.chmod(folder, 0o555), lambda: os.chmod(folder, 0o755)))
    probe = os.path.join(folder, ".probe")
    for make, undo in ways:
        try:
            make()
        except (OSError, subprocess.CalledProcessError):
            continue
        try:
            open(probe, "w").close()
        except OSError:
            return undo
        os.remove(probe)
        undo()
    pytest.skip("no way to make a folder read-only here")


def test_tools_that_read_a_run_work_on_a_read_only_folder(quick_run, tmp_path):
    """evaluate prints its scores and says where nothing could be written (using the
    data the run recorded); export writes beside the caller instead."""
    import shutil

    experiment = os.path.basename(os.path.dirname(quick_run[0]))
    run_dir = str(tmp_path / experiment / "archived")
    shutil.copytree(quick_run[0], run_dir)
    undo = read_only(run_dir)
    try:
        evaluated = script("evaluate.py", run_dir)
        assert evaluated.returncode == 0 and "Traceback" not in evaluated.stderr, evaluated.stderr[-2000:]
        assert "where the run recorded it trained" in evaluated.stdout
        assert "top-1 " in evaluated.stdout and "is read-only: evaluation.json was not written; " \
            "pass --out DIR to keep it" in evaluated.stdout
        kept = script("evaluate.py", run_dir, "--out", str(tmp_path / "scores"))
        assert kept.returncode == 0 and os.path.exists(tmp_path / "scores" / "evaluation.json")
        exported = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "export.py"),
                                   run_dir, "--format", "saved_model"], capture_output=True,
                                  text=True, cwd=str(tmp_path), timeout=600)
        assert exported.returncode == 0 and "Traceback" not in exported.stderr, exported.stderr[-2000:]
        written = tmp_path / f"{experiment}-archived"
        assert f"is read-only: writing to {written}" in exported.stdout
        assert os.path.exists(written / "saved_model" / "saved_model.pb")
        missing = script("evaluate.py", str(tmp_path / "nowhere"))
        assert missing.returncode == 2 and "does not exist" in missing.stderr
    finally:
        undo()


def test_tensorboard_logs_hold_the_epoch_scalars(quick_run):
    run_dir, _ = quick_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = os.path.join(run_dir, "tensorboard", "train")
    events = EventAccumulator(folder, size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"]) | set(events.Tags()["scalars"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_lr", "epoch_seconds"} <= tags, tags


def test_console_shows_progress_without_tensorflow_noise(quick_run):
    _, result = quick_run
    assert "epoch 1 of 2 done" in result.stdout and "left (" in result.stdout
    assert "scoring the final and the best model on the 40 test images" in result.stdout
    for noise in ("cudart_stub", "cuInit", "absl::InitializeLog"):
        assert noise not in result.stderr, result.stderr[-2000:]


def test_records_are_readable_by_the_group(quick_run):
    run_dir, _ = quick_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "status.json", "metrics.json", "accuracy.json"):
        mode = stat.S_IMODE(os.stat(os.path.join(run_dir, name)).st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_run_plots_give_percent_with_the_papers_line(quick_run):
    run_dir, _ = quick_run
    plotted = record.read_json(os.path.join(run_dir, "accuracy.json"))
    history = record.read_history(os.path.join(run_dir, "history.csv"))
    assert plotted["ylabel"] == "accuracy (%)"
    assert plotted["series"][0]["y"] == pytest.approx([100 * row["accuracy"] for row in history])
    from plots.run_plots import _spread

    assert _spread([{"loss": 5.0, "val_loss": 0.4}]) and not _spread([{"loss": 2.0, "val_loss": 0.5}])


@pytest.mark.parametrize("args, message", [
    (["--input-threads", "100"], "--input-threads must be 0 (half the cores) or 1 to 8; got 100"),
    (["--input-threads", "-1"], "--input-threads must be 0"),
])
def test_options_out_of_range_are_refused(capsys, args, message):
    from experiments.run import main

    assert main(["cnn_baseline", *args]) == 2
    assert message in capsys.readouterr().err


def test_quick_keeps_explicit_epochs_and_val_split(shared_cifar10, tmp_path):
    printed = script("run.py", "cnn_baseline", "--quick", "--epochs", "5", "--print-config",
                     "--data-dir", str(tmp_path / "no-such-data"))
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert json.loads(printed.stdout)["epochs"] == 5  # the explicit value wins over --quick's 2
    group = script("run.py", "norm_comparison", "--print-config")
    assert [recipe["name"] for recipe in json.loads(group.stdout)] == [
        "norm_batch", "norm_layer", "norm_group", "norm_instance"]
    refused = script("run.py", "cnn_baseline", "--quick", "--val-split", "60000", "--data-dir",
                     shared_cifar10, "--output-dir", str(tmp_path / "runs"))
    assert refused.returncode == 1 and "--val-split must lie in" in refused.stderr
    assert not os.path.exists(tmp_path / "runs" / "cnn_baseline")
