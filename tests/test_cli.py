"""experiments/run.py end to end, in subprocesses, on tiny synthetic CIFAR files;
refusals of bad options through its main() in this process (each child costs a
TensorFlow import)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "experiments", "run.py")
RECORD_FILES = {"config.json", "status.json", "history.csv", "metrics.json", "best.keras",
                "accuracy.png", "loss.png", "lr.png"}


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def refused(capsys, *args):
    """run.py's main(args) here: its exit code and what it wrote to stderr."""
    from experiments.run import main

    code = main(list(args))
    return code, capsys.readouterr().err


def epochs_in(path):
    with open(path, newline="") as stream:
        return [int(row["epoch"]) for row in csv.DictReader(stream)]


def test_list_json_counts_come_from_the_built_models(tmp_path):
    # Both listings in one process, which builds each network once (an empty cache);
    # again from the cache the counts were written to, in a fraction of the time.
    code = (f"import runpy; main = runpy.run_path({RUN!r})['main']; "
            "main(['--list', '--json']); print('@@'); main(['--list'])")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    both = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert both.returncode == 0, both.stderr[-2000:]
    # The counts went to the cache, keyed by the network code; a listing reads them
    # from there (a count changed in the file shows), and builds nothing.
    cache = tmp_path / "cifar-repro" / "parameter_counts.json"
    saved = json.loads(cache.read_text())
    key = next(k for k in saved["counts"] if k.startswith("kth_resnet_b ") and '"stages"' in k
               and k.endswith(" 10"))
    saved["counts"][key] = [1, 2]
    cache.write_text(json.dumps(saved))
    cached = subprocess.run([sys.executable, RUN, "--list", "--json"], capture_output=True,
                            text=True, env=env)
    assert {row["name"]: row for row in json.loads(cached.stdout)}["resnet_deep"][
        "trainable_params"] == 1
    listed_json, listed_text = both.stdout.split("\n@@\n")
    rows = {row["name"]: row for row in json.loads(listed_json)}
    deep = rows["resnet_deep"]
    assert (deep["paper"], deep["model"]) == ("004", "kth_resnet_b")
    assert (deep["trainable_params"], deep["non_trainable_params"]) == (4_332_304, 7_686)
    assert deep["paper_accuracy"] == 93.78
    assert rows["resnet_cifar100"]["trainable_params"] == 4_355_434
    assert rows["mobilenetv2"]["trainable_params"] == 2_598_074
    # Recipe lengths as the authors trained them (the fidelity fixes).
    assert rows["noisy_labels"]["epochs"] == rows["noisy_labels_symmetric40"]["epochs"] == 50
    assert rows["resnet5m_row11"]["epochs"] == rows["resnet5m_row12"]["epochs"] == 130
    assert rows["se_resnet_mixup"]["epochs"] == 416
    assert "best of 5 runs" in rows["resnet110"]["notes"]
    assert "cnn_progression: cnn_baseline -> cnn_vgg3" in listed_text
    # Every row lines up under the header, the longest names included.
    table = [line for line in listed_text.split("\ngroups:")[0].splitlines()
             if line.strip() and not line.lstrip().startswith("note:")]
    header = table[0]
    starts = [header.index(column) for column in ("paper", "model")]
    for line in table[1:]:
        assert [line.index(value, start - 1) for value, start in
                zip(line.split()[1:3], starts)] == starts, line
        assert len(line) == len(header), line


def test_unknown_experiment_suggests_close_names():
    result = run("resnet_dep")
    assert result.returncode == 2
    assert "unknown experiment or group 'resnet_dep'" in result.stderr
    assert "resnet_deep" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("edit, message", [
    ("optimizer.lerning_rate=0.1", "unknown key 'optimizer.lerning_rate'"),
    ("epochz=3", "Did you mean epochs"),
    ("epochs=-1", "epochs must be a whole number >= 1"),
    ("batch_size=0", "batch_size must be a whole number >= 1"),
    ("epochs=abc", "expected a whole number like 100"),
    ("optimizer.name=lion", "optimizer.name must be one of"),
    ("optimizer.learning_rate=0", "learning_rate must be a number > 0"),
    ("schedule.patience=3", "schedule 'kth_step' does not use ['patience']"),
    ("model_args.stagez=[1,1,1]", "kth_resnet_b does not take ['stagez']"),
    ("monitor=val_acc", "monitor must be one of val_accuracy, val_loss"),
    ("early_stopping.patience=abc", "early_stopping.patience must be a whole number"),
    ("early_stopping.monitor=acc", "early_stopping.monitor must be one of"),
    ("optimizer.learning_rate=Infinity", "numbers must be finite; got 'Infinity'"),
    ("optimizer.weight_decay=1e400", "numbers must be finite"),
    ("schedule.values=[0.1,NaN,0.001]", "numbers must be finite"),
])
def test_bad_set_edits_name_the_key_and_the_allowed_values(capsys, edit, message):
    code, stderr = refused(capsys, "resnet_deep", "--set", edit)
    assert code == 2 and message in stderr, stderr[-2000:]


def test_set_edits_are_checked_together(capsys, tmp_path):
    """A new schedule kind and its required field, given as two --set edits, make one
    valid recipe (the run gets as far as the missing data)."""
    code, stderr = refused(capsys, "resnet_deep", "--set", "schedule.kind=exponential",
                           "--set", "schedule.gamma=0.9", "--data-dir", str(tmp_path / "missing"),
                           "--output-dir", str(tmp_path / "runs"))
    assert code == 1, stderr[-2000:]
    assert "--data-dir" in stderr and "schedule" not in stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--run-id", "../escaped", "--run-id must be a folder name"),
    ("--run-id", "a/b", "--run-id must be a folder name"),
    ("--seed", "-1", "--seed must be a whole number in [0, 2**32)"),
])
def test_bad_run_options_are_refused_before_anything_is_written(capsys, tmp_path, flag, value,
                                                                 message):
    out = tmp_path / "runs"
    code, stderr = refused(capsys, "cnn_baseline", "--quick", "--data-dir",
                           str(tmp_path / "missing"), "--output-dir", str(out), flag, value)
    assert code == 2 and message in stderr, stderr[-2000:]
    assert not os.path.exists(out)
    assert not os.path.exists(tmp_path / "escaped")


def test_no_data_gives_one_clear_message(tmp_path):
    result = run("cnn_baseline", "--quick", "--data-dir", str(tmp_path / "missing"),
                 "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 1
    assert "cifar-10-python.tar.gz" in result.stderr and "--data-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "runs")  # the folders it made are gone again
    kept = tmp_path / "runs" / "cnn_baseline" / "seed0-quick" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    result = run("cnn_baseline", "--quick", "--data-dir", str(tmp_path / "missing"),
                 "--output-dir", str(tmp_path / "runs"))
    assert result.returncode == 1 and kept.read_text() == "mine"  # one that was there stays


def test_quick_run_writes_the_whole_run_record(shared_cifar10, tmp_path):
    out = str(tmp_path / "runs")
    result = run("resnet_deep", "--quick", "--data-dir", shared_cifar10, "--output-dir", out,
                 "--set", "train_images=64")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.join(out, "resnet_deep", "seed0-quick")
    assert RECORD_FILES <= set(os.listdir(run_dir))
    assert not os.path.exists(os.path.join(run_dir, "backup"))  # removed once finished
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["recipe"]["model_args"] == {"stages": [3, 3, 3], "widths": [64, 128, 256]}
    assert config["backend"] == keras.backend.backend() and config["seed"] == 0 and config["quick"]
    # glibc's thresholds are raised on the PyTorch backend only (training/allocator.py)
    assert config["malloc_keeps_freed_memory"] is (keras.backend.backend() == "torch")
    assert config["validation"] == "test set" and "keras" in config["versions"]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert (metrics["trainable_params"], metrics["non_trainable_params"]) == (4_332_304, 7_686)
    assert metrics["validation_is_test"] and metrics["quick"] and metrics["epochs_run"] == 2
    assert metrics["full_recipe_epochs"] == 100
    with open(os.path.join(run_dir, "history.csv"), newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(0.1)
    assert json.load(open(os.path.join(run_dir, "status.json")))["status"] == "completed"
    again = run("resnet_deep", "--quick", "--data-dir", shared_cifar10, "--output-dir", out,
                "--set", "train_images=64")
    assert again.returncode == 0 and "already completed" in again.stdout


def test_held_out_validation_reports_test_accuracy_separately(shared_cifar10, tmp_path):
    out = str(tmp_path / "runs")
    result = run("cnn_baseline", "--quick", "--val-split", "50", "--data-dir", shared_cifar10,
                 "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.join(out, "cnn_baseline", "seed0-quick")
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert not metrics["validation_is_test"]
    assert 0 <= metrics["best_test_accuracy"] <= 1 and 0 <= metrics["final_test_accuracy"] <= 1
    assert "50 held-out" in json.load(open(os.path.join(run_dir, "config.json")))["validation"]
    with open(os.path.join(run_dir, "accuracy.json")) as stream:
        assert [line["label"] for line in json.load(stream)["series"]] == ["train", "validation (held out)"]


COMMAND = ["cnn_baseline", "--epochs", "40", "--set", "train_images=64", "--batch-size", "32"]


def start(shared_cifar10, out):
    # SIGINT as in a terminal: a suite started in the background (`cmd &`) passes its
    # children an ignored SIGINT, and a run that ignores Ctrl-C trains to its end.
    return subprocess.Popen([sys.executable, RUN, *COMMAND, "--data-dir", shared_cifar10,
                             "--output-dir", out], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_epochs(history, count, process, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        if os.path.exists(history) and len(epochs_in(history)) >= count:
            return
        if process.poll() is not None:
            pytest.fail("the run ended before it could be interrupted:\n" + process.stdout.read())
        time.sleep(0.02)
    pytest.fail("no epochs were logged in time")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_with_each_epoch_once(shared_cifar10, tmp_path, how):
    out = str(tmp_path / "runs")
    run_dir = os.path.join(out, "cnn_baseline", "seed0")
    history = os.path.join(run_dir, "history.csv")
    process = start(shared_cifar10, out)
    wait_for_epochs(history, 3, process)
    process.send_signal(how)
    output = process.communicate(timeout=120)[0]
    status = json.load(open(os.path.join(run_dir, "status.json")))["status"]
    if how == signal.SIGINT:
        assert process.returncode == 130 and status == "interrupted", output[-3000:]
    else:
        assert status == "running"  # a killed process cannot say more
    done_before = len(epochs_in(history))
    assert done_before < 40
    result = run(*COMMAND, "--data-dir", shared_cifar10, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stdout
    assert epochs_in(history) == list(range(40))
    assert json.load(open(os.path.join(run_dir, "status.json")))["status"] == "completed"
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    with open(history, newline="") as stream:
        accuracies = [float(r["val_accuracy"]) for r in csv.DictReader(stream)]
    assert metrics["best_val_accuracy"] == pytest.approx(max(accuracies))
    assert metrics["best_epoch"] == accuracies.index(max(accuracies))
    # The closing line counts epochs from 1, as Keras's progress lines do, and
    # names the run record's folder.
    assert f"at epoch {metrics['best_epoch'] + 1}; run record in {run_dir}\n" in result.stdout


def test_changed_recipe_under_an_existing_run_is_refused(shared_cifar10, tmp_path):
    out = str(tmp_path / "runs")
    first = run("cnn_baseline", "--quick", "--data-dir", shared_cifar10, "--output-dir", out)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = os.path.join(out, "cnn_baseline", "seed0-quick", "metrics.json")
    before = open(metrics).read()
    changed = run("cnn_baseline", "--quick", "--set", "optimizer.learning_rate=0.5",
                  "--data-dir", shared_cifar10, "--output-dir", out)
    assert changed.returncode == 1
    assert "different recipe" in changed.stderr and "--run-id" in changed.stderr
    assert open(metrics).read() == before


BLOCKED_TF_RUN = """
import runpy, sys
sys.modules["tensorflow"] = None  # as on the GPU machines: importing it must fail
sys.argv = [{run!r}] + {args!r}
runpy.run_path({run!r}, run_name="__main__")
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_quick_run_on_other_backends_without_tensorflow(shared_cifar10, tmp_path, backend):
    pytest.importorskip(backend)
    out = str(tmp_path / "runs")
    args = ["resnet_deep", "--quick", "--data-dir", shared_cifar10, "--output-dir", out,
            "--set", "train_images=64", "--input-threads", "3"]
    result = subprocess.run([sys.executable, "-c", BLOCKED_TF_RUN.format(run=RUN, args=args)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.join(out, "resnet_deep", "seed0-quick")
    assert RECORD_FILES <= set(os.listdir(run_dir))
    assert json.load(open(os.path.join(run_dir, "config.json")))["backend"] == backend


@pytest.mark.slow
def test_epoch_benchmark_times_each_input_thread_count(shared_cifar10, tmp_path):
    out = tmp_path / "epochs.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "epochs.py"), "--models", "cnn_baseline",
         "--input-threads", "1", "2", "--epochs", "2", "--set", "train_images=64",
         "--data-dir", shared_cifar10, "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert [(case["experiment"], case["input_threads"], case["train_images"]) for case in cases] == [
        ("cnn_baseline", 1, 64), ("cnn_baseline", 2, 64)]
    assert all([row["epoch"] for row in case["epochs"]] == [1, 2] for case in cases)
    assert all(row["seconds"] > row["input_seconds"] > 0 for case in cases for row in case["epochs"])
    table = (tmp_path / "epochs.md").read_text()
    assert "| cnn_baseline (" in table and table.count("| cnn_baseline") == 2


def test_validating_on_part_of_the_test_set_scores_the_whole_of_it(shared_cifar10, tmp_path):
    """val_images: each epoch validates on the first N test images; the final and best
    models are scored on every test image at the end (the parity runs' setting)."""
    out = str(tmp_path / "runs")
    result = run("cnn_baseline", "--quick", "--set", "val_images=16", "--data-dir", shared_cifar10,
                 "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.join(out, "cnn_baseline", "seed0-quick")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["validation"] == "the first 16 test images" and config["validation_images"] == 16
    assert "scoring the final and the best model on the 40 test images" in result.stdout
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["final_test_accuracy"] * 40 == pytest.approx(round(metrics["final_test_accuracy"] * 40))
