"""The cnn_regularization search (experiments/searches.py): its plan, and the search
end to end with a poisoned test set, killed and resumed. A file of its own, so
that pytest-xdist runs it beside test_tune.py rather than after it."""

import json
import os
import signal
import subprocess
import sys
import time

from test_tune import TUNE, results, tune


def test_plan_counts_hyperband_rounds_and_prices_them_from_the_measured_table(capsys, tmp_path):
    """Hyperband at 9 epochs (factor 3): brackets of 9+3+1, 5+2 and 3 trials at 1/3/9,
    3/9 and 9 epochs: 23 trials, 87 epochs, priced from a stated table."""
    from experiments.tune import main

    times = tmp_path / "epochs.json"
    case = {"experiment": "cnn_regularized", "batch_size": 64, "train_images": 10000,
            "process_seconds": 100.0, "device": "a CPU", "backend": "torch",
            "epochs": [{"epoch": 1, "seconds": 40.0}, {"epoch": 2, "seconds": 30.0}]}
    times.write_text(json.dumps({"date": "today", "cases": [case]}))
    assert main(["cnn_regularization", "--plan", "--times", str(times)]) == 0
    out = capsys.readouterr().out
    # start-up: 100 s of process less 2 epochs of 30 s -> 40 s a trial
    hours = (87 * 30.0 + 23 * 40.0) / 3600
    assert "hyperband, base cnn_regularized, 10,000 training and 5,000 validation images" in out
    assert f"23 trials, 87 epochs; 30 s an epoch at batch 64 and 40 s to start each trial -> " \
           f"{hours:.1f} h" in out
    # Every search is planned; one without a measured base says so.
    assert main(["--plan", "--times", str(times)]) == 0
    out = capsys.readouterr().out
    assert out.count(" trials, ") == 5
    assert "optimizer (random, base resnet20, 10,000 training and 5,000 validation images): " \
           "20 trials, 3280 epochs; no measured epoch time for resnet20" in out
    assert main(["cnn_regularization", "--plan", "--times", str(tmp_path / "none.json")]) == 2
    assert "benchmarks/epochs.py --models cnn_regularized" in capsys.readouterr().err


def _poison_test_labels(folder):
    import pickle

    path = os.path.join(folder, "cifar-10-batches-py", "test_batch")
    with open(path, "rb") as stream:
        batch = pickle.load(stream)
    batch[b"labels"] = [(label + 1) % 10 for label in batch[b"labels"]]
    with open(path, "wb") as stream:
        pickle.dump(batch, stream)


def test_cnn_search_selects_on_held_out_training_images_and_resumes(tmp_path):
    """The CNN search end to end, twice: on clean data, and on data whose test labels
    are all wrong, killed after its first trial and resumed. Both runs choose the
    same configuration with the same scores, and no trial scored the test set."""
    from conftest import write_cifar10

    clean, poisoned = str(tmp_path / "clean"), str(tmp_path / "poisoned")
    write_cifar10(clean)
    write_cifar10(poisoned)
    _poison_test_labels(poisoned)
    fast = ["--quick", "--epochs", "2", "--set", "val_split=40", "--set", "train_images=0"]
    first = tune("cnn_regularization", *fast, "--data-dir", clean, "--directory", str(tmp_path / "a"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    args = [sys.executable, TUNE, "cnn_regularization", *fast, "--data-dir", poisoned,
            "--directory", str(tmp_path / "b")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "b" / "cnn_regularization"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(folder / "results.json") and any(
                t["status"] == "completed" for t in results(tmp_path / "b", "cnn_regularization")):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {t["trial_id"]: os.path.getmtime(folder / t["run_dir"] / "metrics.json")
                for t in results(tmp_path / "b", "cnn_regularization") if t["status"] == "completed"}
    assert finished
    second = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    a = results(tmp_path / "a", "cnn_regularization")
    b = results(tmp_path / "b", "cnn_regularization")
    for trial_id, stamp in finished.items():  # a finished trial is not trained again
        run_dir = next(t["run_dir"] for t in b if t["trial_id"] == trial_id)
        assert os.path.getmtime(folder / run_dir / "metrics.json") == stamp
    # Hyperband at 2 epochs is one bracket of 2 trials (tune.py --plan's count).
    assert len(a) == len(b) == 2
    assert all(t["status"] == "completed" and t["epochs"] == 2 for t in a + b)
    assert [(t["hyperparameters"], t["score"]) for t in a] == [(t["hyperparameters"], t["score"]) for t in b]
    for trial in a:
        with open(os.path.join(tmp_path / "a", "cnn_regularization", trial["run_dir"], "metrics.json")) as stream:
            metrics = json.load(stream)
        assert metrics["validation_is_test"] is False
        assert not [key for key in metrics if "test" in key and key != "validation_is_test"]
    best_a = open(tmp_path / "a" / "cnn_regularization" / "best_command.txt").read()
    assert best_a == open(folder / "best_command.txt").read()
    assert best_a.startswith("python experiments/run.py cnn_regularized --set 'val_split=40' "
                             "--set 'train_images=0' --set 'model_args.pool_dropout=")
