"""experiments/tune.py: KerasTuner searches through the suite's engine, on tiny
synthetic CIFAR files. The optimizer search (ResNet-20) keeps trials short."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import models  # noqa: F401  registers the suite's layers, so load_model can rebuild best.keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE = os.path.join(ROOT, "experiments", "tune.py")
# Tiny trials: one quick epoch, and paper 004's one-block CNN in place of ResNet-20
# (the search space, the oracle and the engine are the same).
# Searches select on held-out training images: 40 of the 200 tiny ones, the rest train.
FAST = ["--quick", "--epochs", "1", "--set", 'model="kth_vgg1"', "--set", "val_split=40",
        "--set", "train_images=0"]


def tune(*args, timeout=900):
    return subprocess.run([sys.executable, TUNE, *args], capture_output=True, text=True,
                          timeout=timeout)


def results(directory, search="optimizer"):
    with open(os.path.join(directory, search, "results.json")) as stream:
        return json.load(stream)["trials"]


@pytest.mark.parametrize("tuner", ["random", pytest.param("hyperband", marks=pytest.mark.slow)])
def test_quick_search_writes_results_best_model_and_plots(shared_cifar10, tmp_path, tuner):
    """Random: two trials; Hyperband, whose brackets pass epochs between rounds:
    3 epochs at most, 2 brackets. Bayesian searches train in the test below."""
    directory = str(tmp_path)
    fast = ["--max-trials", "2", *FAST] if tuner == "random" else [*FAST[:2], "3", *FAST[3:]]
    result = tune("optimizer", "--tuner", tuner, *fast,
                  "--data-dir", shared_cifar10, "--directory", directory)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "best so far" in result.stdout and "Train it in full with" in result.stdout
    assert f"results, plots and trials in {os.path.join(directory, 'optimizer')}." in result.stdout
    trials = results(directory)
    assert len(trials) >= 2
    assert all(t["status"] == "completed" and 0 <= t["score"] <= 1 for t in trials)
    assert len({t["trainable_params"] for t in trials}) == 1  # one fixed network
    assert len({t["process"] for t in trials}) == len(trials)  # a process of its own each
    assert all(t["resident_mb"] > 100 for t in trials)  # that process's peak, TensorFlow loaded
    folder = os.path.join(directory, "optimizer")
    import keras

    best = keras.models.load_model(os.path.join(folder, "best.keras"), compile=False)
    assert best.count_params() > 0
    for name in ("score_by_trial.png", "accuracy_vs_params.png", "hp_optimizer.png"):
        assert os.path.getsize(os.path.join(folder, name)) > 1000
    with open(os.path.join(folder, "score_by_trial.json")) as stream:
        plotted = json.load(stream)  # in percent, as the report's figures
    assert plotted["ylabel"] == "best validation accuracy (%)"
    assert sorted(plotted["series"][0]["y"]) == pytest.approx(sorted(100 * t["score"] for t in trials))
    # The best configuration trains with run.py as written.
    from experiments.recipes import EXPERIMENTS
    from training.recipe import apply_override

    command = open(os.path.join(folder, "best_command.txt")).read()
    assert command.startswith("python experiments/run.py resnet20 --set 'model=\"kth_vgg1\"' "
                              "--set 'val_split=40' --set 'train_images=0' "
                              "--set 'optimizer.name=")
    recipe = apply_override(EXPERIMENTS["resnet20"], 'model="kth_vgg1"')
    assert all(not os.path.isabs(t["run_dir"]) for t in trials)  # the folder moves whole
    best_trial = max(trials, key=lambda t: t["score"])
    # The closing line names a best-scoring trial as its folders are named.
    named = re.search(r"best [0-9.]+% \(trial_(\w+), ", result.stdout).group(1)
    assert next(t["score"] for t in trials if t["trial_id"] == named) == best_trial["score"]
    assert os.path.isdir(os.path.join(folder, f"trial_{named}"))
    for edit in best_trial["edits"]:
        recipe = apply_override(recipe, edit)
    assert recipe.optimizer.kind == best_trial["hyperparameters"]["optimizer"]
    # A log-sampled rate is plotted on a log axis.
    for name in os.listdir(folder):
        if name.startswith("hp_") and name.endswith("learning_rate.json"):
            with open(os.path.join(folder, name)) as stream:
                assert json.load(stream)["xscale"] == "log", name


def test_a_search_folder_made_with_other_settings_is_refused(capsys, shared_cifar10, tmp_path):
    """A rerun with another tuner (or --quick, --epochs, --set, --seed) would mix two
    searches' trials: refused, naming the difference and the ways out; --overwrite
    starts over."""
    directory = str(tmp_path)
    first = tune("optimizer", "--max-trials", "1", *FAST, "--data-dir", shared_cifar10,
                 "--directory", directory)
    assert first.returncode == 0, first.stderr[-3000:]
    from experiments.tune import main  # the refusals in this process: no trial starts

    assert main(["optimizer", "--tuner", "bayesian", "--max-trials", "1", *FAST,
                 "--data-dir", shared_cifar10, "--directory", directory]) == 2
    changed = capsys.readouterr().err
    assert "tuner: 'random' -> 'bayesian'" in changed and "--overwrite" in changed
    assert "--directory" in changed
    assert main(["optimizer", "--max-trials", "1", "--epochs", "1", "--set", 'model="kth_vgg1"',
                 "--data-dir", shared_cifar10, "--directory", directory]) == 2
    assert "quick: True -> False" in capsys.readouterr().err
    again = tune("optimizer", "--tuner", "bayesian", "--max-trials", "1", *FAST, "--overwrite",
                 "--data-dir", shared_cifar10, "--directory", directory)
    assert again.returncode == 0, again.stderr[-3000:]
    with open(os.path.join(directory, "optimizer", "results.json")) as stream:
        saved = json.load(stream)
    assert saved["tuner"] == "bayesian" and len(saved["trials"]) == 1


def test_budget_rejects_configurations_before_training(shared_cifar10, tmp_path):
    """Every configuration of a space made only of large networks is rejected before
    training, and the search ends with a clear message."""
    directory = str(tmp_path)
    code = (
        "import sys, runpy\n"
        "import experiments.searches as s\n"
        "def big(hp):\n"
        "    return ['model_args.widths=[256, 512, 1024, 1024]', "
        "'model_args.dropout=' + str(hp.Choice('dropout', [0.0, 0.1]))]\n"
        "s.SEARCHES['resnet_budget'] = s.Search('resnet_budget', 'resnet5m_row6', big, s.BUDGET)\n"
        f"sys.argv = [{TUNE!r}, 'resnet_budget', '--max-trials', '2', '--quick', "
        f"'--data-dir', {shared_cifar10!r}, '--directory', {directory!r}]\n"
        f"runpy.run_path({TUNE!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "over the 5,000,000-parameter budget" in result.stderr
    # The progress line does not call the oracle's 0.0 a score.
    assert "done: score over budget (" in result.stdout and "score 0.0" not in result.stdout
    assert "best so far none trained" in result.stdout
    trials = results(directory, "resnet_budget")
    assert trials and all(t["status"] == "over_budget" and t["trainable_params"] > 5_000_000
                          for t in trials)
    # Nothing trained: no run record was started for any trial.
    for trial in trials:
        assert not os.path.exists(os.path.join(directory, "resnet_budget", trial["run_dir"],
                                               "history.csv"))


def test_two_workers_share_the_trials(shared_cifar10, tmp_path):
    directory = str(tmp_path)
    result = tune("optimizer", "--max-trials", "4", "--workers", "2", *FAST,
                  "--data-dir", shared_cifar10, "--directory", directory)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = results(directory)
    assert len(trials) == 4
    assert all(t["status"] == "completed" for t in trials), (
        [(t["trial_id"], t["status"], t["reason"]) for t in trials], result.stderr[-3000:])
    ids = [t["trial_id"] for t in trials]
    assert len(set(ids)) == 4
    edits = [tuple(t["edits"]) for t in trials]
    assert len(set(edits)) == len(edits)  # no configuration ran twice


def test_unknown_search_suggests_names():
    result = tune("optimiser")
    assert result.returncode == 2 and "Did you mean: optimizer" in result.stderr


def test_missing_data_stops_the_search_before_any_trial(tmp_path):
    result = tune("optimizer", *FAST, "--data-dir", str(tmp_path / "missing"),
                  "--directory", str(tmp_path / "searches"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cifar-10-python.tar.gz" in result.stderr and "--data-dir" in result.stderr
    assert not os.path.exists(tmp_path / "searches" / "optimizer")


def test_zero_epochs_and_an_unwritable_directory_are_refused(shared_cifar10, tmp_path):
    """--epochs 0 used to mean "the recipe's epochs" (a full ResNet-20 trial); a
    --directory that is a file ended in a NotADirectoryError traceback."""
    result = tune("optimizer", "--epochs", "0", "--data-dir", shared_cifar10,
                  "--directory", str(tmp_path / "searches"), timeout=120)
    assert result.returncode == 2 and "--epochs must be at least 1; got 0" in result.stderr
    assert not os.path.exists(tmp_path / "searches")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = tune("optimizer", *FAST, "--data-dir", shared_cifar10, "--directory", str(not_a_folder))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "pass --directory with a writable folder" in result.stderr

