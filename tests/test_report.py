"""experiments/report.py on run records: one written by a real quick run, the
others by a fixture that follows the record format field for field."""

import csv
import json
import os
import subprocess
import sys

import keras
import pytest

from experiments.recipes import EXPERIMENTS
from training import record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "experiments", "report.py")
RUN = os.path.join(ROOT, "experiments", "run.py")


def write_record(runs, name, run_id, best, final, epochs=None, quick=False, noise=None, seconds=60.0,
                 data="original", history_epochs=None, train_images=0):
    """A completed run record as training.engine writes it (`epochs` as --epochs
    sets it, `train_images` as --set train_images=N; `history_epochs` fewer rows
    than that, as no finished run has)."""
    recipe = {**EXPERIMENTS[name].to_dict(), "train_images": train_images}
    full_epochs = recipe["epochs"]
    epochs = recipe["epochs"] = epochs or recipe["epochs"]  # as --epochs and --quick leave it
    folder = os.path.join(runs, name, run_id)
    os.makedirs(folder)
    config = {"experiment": name, "recipe": recipe, "seed": 0, "quick": quick,
              "backend": "tensorflow", "device": "CPU (2 cores, x86_64)", "platform": "Linux",
              "data_origin": data}
    metrics = {"epochs_run": epochs, "recipe_epochs": epochs, "full_recipe_epochs": full_epochs,
               "best_test_accuracy": best, "final_test_accuracy": final, "best_val_accuracy": best,
               "final_val_accuracy": final, "trainable_params": 1000, "validation_is_test": True,
               "paper_accuracy": recipe["paper_accuracy"], "paper_source": recipe["paper_source"],
               "train_seconds": seconds, "quick": quick}
    columns = ["epoch", "accuracy", "loss", "lr", "seconds", "val_accuracy", "val_loss"]
    if noise:
        config.update(noise_kind=noise[0], noise_rate=noise[1])
        metrics.update(noise_kind=noise[0], noise_rate=noise[1])
        columns += ["flipped_true_accuracy", "flipped_noisy_accuracy"]
    with open(os.path.join(folder, "history.csv"), "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for epoch in range(history_epochs or epochs):
            value = final * (epoch + 1) / epochs
            row = {"epoch": epoch, "accuracy": value, "loss": 2 - value, "lr": 0.1, "seconds": 1.0,
                   "val_accuracy": value, "val_loss": 2.5 - value,
                   "flipped_true_accuracy": 0.5 - value / 4, "flipped_noisy_accuracy": value / 2}
            writer.writerow([row[c] for c in columns])
    record.write_json(os.path.join(folder, "config.json"), config)
    record.write_json(os.path.join(folder, "metrics.json"), metrics)
    record.write_status(folder, "completed")
    return folder


@pytest.fixture
def runs(tmp_path, shared_cifar10):
    runs = str(tmp_path / "runs")
    quick = subprocess.run([sys.executable, RUN, "cnn_baseline", "--quick", "--data-dir",
                            shared_cifar10, "--output-dir", runs], capture_output=True, text=True)
    assert quick.returncode == 0, quick.stderr[-2000:]
    write_record(runs, "cnn_baseline", "seed1", 0.70, 0.69)
    write_record(runs, "cnn_baseline", "seed2", 0.72, 0.70)
    write_record(runs, "resnet_step", "seed0", 0.93, 0.925)
    write_record(runs, "resnet_deep", "seed0", 0.80, 0.79, epochs=30)  # --epochs 30
    for kind, rate, best in (("symmetric", 0.0, 0.9), ("symmetric", 0.4, 0.8), ("asymmetric", 0.4, 0.85)):
        write_record(runs, f"noisy_labels_{kind}{round(rate * 100)}", "seed0", best, best - 0.05,
                     noise=(kind, rate))
    write_record(runs, "resnet5m_row6", "seed0", 0.95, 0.949)
    broken = write_record(runs, "cnn_vgg3", "seed0", 0.7, 0.7)
    with open(os.path.join(broken, "metrics.json"), "w") as stream:
        stream.write("{ half a file")
    os.makedirs(os.path.join(runs, "cnn_dropout", "seed0"))  # no record at all
    return runs


def write_search(searches):
    """A search folder as experiments/tune.py writes it."""
    folder = os.path.join(searches, "resnet_budget")
    os.makedirs(folder)
    trials = [
        {"trial_id": "00", "status": "completed", "score": 0.60, "trainable_params": 3_000_000},
        {"trial_id": "01", "status": "over_budget", "score": None, "trainable_params": 6_000_000},
        {"trial_id": "02", "status": "completed", "score": 0.70, "trainable_params": 1_000_000},
        {"trial_id": "03", "status": "completed", "score": 0.80, "trainable_params": 4_000_000},
        {"trial_id": "04", "status": "failed", "score": None, "trainable_params": 2_000_000},
        {"trial_id": "05", "status": "completed", "score": 0.50, "trainable_params": 500_000},
    ]
    for index, trial in enumerate(trials):
        rate = 0.001 * 10 ** (index % 3)
        trial.update(hyperparameters={"dropout": index / 10, "learning_rate": rate}, epochs=2,
                     seconds=10.0, run_dir="", device="a CPU", backend="torch",
                     edits=[f"model_args.dropout={index / 10}",
                            f"optimizer.learning_rate={rate}", "epochs=2"])
    record.write_json(os.path.join(folder, "results.json"),
                      {"search": "resnet_budget", "base": "resnet5m_row6", "tuner": "random",
                       "budget": 5_000_000, "quick": True, "log_scale": ["learning_rate"],
                       "subset": ["val_split=5000"], "trials": trials})
    with open(os.path.join(folder, "best_command.txt"), "w") as stream:
        stream.write("python experiments/run.py resnet5m_row6 --set 'model_args.dropout=0.1'\n")
    os.makedirs(os.path.join(searches, "broken"))
    with open(os.path.join(searches, "broken", "results.json"), "w") as stream:
        stream.write("{ half")


def test_report_writes_tables_and_figures_from_the_records(runs, tmp_path):
    out = str(tmp_path / "reports")
    searches = str(tmp_path / "searches")
    write_search(searches)
    result = subprocess.run([sys.executable, REPORT, "--runs", runs, "--searches", searches,
                             "--out", out], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cnn_vgg3" in result.stderr and "cnn_dropout" in result.stderr
    text = open(os.path.join(out, "RESULTS.md")).read()
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    # Two full seeds of cnn_baseline: mean ± std over n = 2; the gap against 68%.
    full = rows["cnn_baseline/**full**"]
    assert "| 2 |" in full and "71.00 ± 1.41" in full and "+3.00" in full
    assert "quick" in rows["cnn_baseline/quick"] and rows["cnn_baseline/quick"].endswith(f"| {keras.backend.backend()} |")
    assert "| - | " in rows["cnn_baseline/quick"]  # no gap for a quick run
    assert "short: 30 of 100 epochs" in rows["resnet_deep/short: 30 of 100 epochs"]
    assert "93.00" in rows["resnet_step/**full**"] and "-0.36" in rows["resnet_step/**full**"]
    assert "## Paper 004" in text and "## Paper 001" in text
    assert "cnn_vgg3" in text.split("## Skipped records")[1]
    assert "broken" in text.split("## Skipped records")[1]
    search_row = next(line for line in text.splitlines() if line.startswith("| resnet_budget |"))
    assert "| random | 2 (quick) | 4 | 1 | 1 | 80.00 | 4,000,000 |" in search_row
    assert "model_args.dropout=0.1" in search_row
    # Its own section: the cost, the best trial's recipe against the base's, every trial.
    section = text.split("### Search resnet_budget")[1].split("## ")[0]
    assert "Cost: 6 trials, 12 epochs, 0.02 training hours on a CPU, torch." in section
    assert "`val_split=5000`" in section and "never on the test set" in section
    assert "Best: trial 03, 80.00% validation accuracy after 2 epochs." in section
    assert "| model_args.dropout | 0 | 0.3 |" in section  # the builder's default
    assert "| optimizer.learning_rate | 0.01 | 0.001 |" in section  # the recipe's
    assert "epochs" not in section.split("| recipe field |")[1].split("Trials,")[0]
    trial_rows = [line for line in section.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in trial_rows] == ["| 03", "| 02", "| 00", "| 05"]
    assert trial_rows[0] == "| 03 | 0.3 | 0.001 | 80.00 | 2 | 10 |"
    best_so_far = json.load(open(os.path.join(out, "figures", "search_resnet_budget_best_so_far.json")))
    assert best_so_far["series"][1]["y"] == [60.0, 70.0, 80.0, 80.0]
    rate_figure = json.load(open(os.path.join(out, "figures", "search_resnet_budget_learning_rate.json")))
    assert rate_figure["xscale"] == "log"
    assert json.load(open(os.path.join(out, "figures", "search_resnet_budget_dropout.json")))["xscale"] == "linear"

    figures = os.path.join(out, "figures")
    expected = {"cnn_progression_accuracy", "cnn_progression_loss", "cnn_progression_best",
                "noise_sweep", "noise_memorisation", "resnet5m_accuracy_vs_params",
                "lr_schedules_004", "lr_schedules_001", "lr_schedules_003", "lr_schedules_he2015"}
    for name in expected:
        assert os.path.getsize(os.path.join(figures, name + ".png")) > 1000, name

    def data(name):
        with open(os.path.join(figures, name + ".json")) as stream:
            return {line["label"]: line for line in json.load(stream)["series"]}

    def history(folder):
        return record.read_history(os.path.join(runs, folder, "history.csv"))

    # Figure data read back and compared with the records.
    curves = data("cnn_progression_accuracy")
    step = history("resnet_step/seed0")
    assert curves["resnet_step"]["y"] == pytest.approx([100 * row["val_accuracy"] for row in step])
    assert "resnet_deep (short: 30 of 100 epochs)" in curves
    bars = data("cnn_progression_best")
    assert bars["paper"]["y"][bars["paper"]["x"].index("resnet_step")] == 93.36
    ours = bars["ours (best epoch, mean over runs)"]
    assert ours["y"][ours["x"].index("resnet_step")] == pytest.approx(93.0)
    assert ours["y"][ours["x"].index("cnn_baseline")] == pytest.approx(71.0)  # mean of 2 full runs
    sweep = data("noise_sweep")
    assert sweep["symmetric, best epoch"]["x"] == [0.0, 0.4]
    assert sweep["symmetric, best epoch"]["y"] == pytest.approx([90.0, 80.0])
    assert sweep["asymmetric, final epoch"]["y"] == pytest.approx([80.0])
    memorised = data("noise_memorisation")["symmetric 0.4: noisy labels"]["y"]
    assert memorised == pytest.approx(
        [100 * row["flipped_noisy_accuracy"] for row in history("noisy_labels_symmetric40/seed0")])
    frontier = data("search_resnet_budget_frontier")
    assert frontier["trials"]["x"] == pytest.approx([3.0, 1.0, 4.0, 0.5])
    # The best score at or under each size: 50% at 0.5M, 70% at 1M, then 80% at 4M.
    assert frontier["frontier"]["x"] == pytest.approx([0.5, 1.0, 4.0])
    assert frontier["frontier"]["y"] == pytest.approx([50.0, 70.0, 80.0])
    schedules = data("lr_schedules_004")
    rates = next(line for label, line in schedules.items() if label.startswith("resnet_step"))["y"]
    assert rates[51] == pytest.approx(0.1) and rates[52] == pytest.approx(0.01)
    assert rates[77] == pytest.approx(0.001)


def test_report_without_runs_still_writes_the_schedules(tmp_path):
    out = str(tmp_path / "reports")
    (tmp_path / "runs").mkdir()
    (tmp_path / "searches").mkdir()
    result = subprocess.run([sys.executable, REPORT, "--runs", str(tmp_path / "runs"),
                             "--searches", str(tmp_path / "searches"), "--out", out],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 runs of 0 experiments" in result.stdout
    assert os.path.exists(os.path.join(out, "figures", "lr_schedules_000.png"))


@pytest.mark.parametrize("option", ["--runs", "--searches"])
def test_a_mistyped_folder_stops_the_report_and_keeps_the_last_one(tmp_path, option):
    folders = {"--runs": str(tmp_path / "runs"), "--searches": str(tmp_path / "searches")}
    write_record(folders["--runs"], "cnn_baseline", "seed0", 0.7, 0.69)
    os.makedirs(folders["--searches"])
    out = str(tmp_path / "reports")

    def report():
        options = [part for name, folder in folders.items() for part in (name, folder)]
        return subprocess.run([sys.executable, REPORT, "--out", out] + options,
                              capture_output=True, text=True)

    assert report().returncode == 0
    before = open(os.path.join(out, "RESULTS.md")).read()
    folders[option] = str(tmp_path / "typo")
    result = report()
    assert result.returncode == 2
    assert f"{option} {tmp_path / 'typo'}: no such folder" in result.stderr
    assert open(os.path.join(out, "RESULTS.md")).read() == before


def test_figures_say_which_set_validated_and_which_runs_were_not_full(tmp_path):
    runs, out = str(tmp_path / "runs"), str(tmp_path / "reports")
    for name in ("norm_batch", "norm_layer"):  # trained with --val-split
        metrics_path = os.path.join(write_record(runs, name, "seed0", 0.8, 0.79), "metrics.json")
        metrics = json.load(open(metrics_path))
        record.write_json(metrics_path, {**metrics, "validation_is_test": False})
    write_record(runs, "cnn_baseline", "seed0", 0.7, 0.69)
    write_record(runs, "noisy_labels_symmetric0", "seed0", 0.9, 0.89, noise=("symmetric", 0.0))
    write_record(runs, "noisy_labels_symmetric60", "seed0-quick", 0.2, 0.2, epochs=2, quick=True,
                 noise=("symmetric", 0.6))
    write_record(runs, "resnet5m_row6", "seed0", 0.95, 0.949)
    os.makedirs(tmp_path / "searches")  # none: the repository's own searches/ stay out
    result = subprocess.run([sys.executable, REPORT, "--runs", runs, "--searches",
                             str(tmp_path / "searches"), "--out", out], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

    def figure(name):
        with open(os.path.join(out, "figures", name + ".json")) as stream:
            return json.load(stream)

    assert figure("norm_comparison_accuracy")["ylabel"] == "held-out validation accuracy (%)"
    assert figure("norm_comparison_loss")["ylabel"] == "held-out validation cross-entropy loss"
    assert figure("cnn_progression_accuracy")["ylabel"] == "test accuracy (%)"
    # A quick run among the plotted points is named in the title; all-full figures say nothing.
    assert figure("noise_sweep")["title"].endswith("\n(includes quick runs, not the full recipe)")
    assert figure("noise_memorisation")["title"].endswith("(includes quick runs, not the full recipe)")
    assert "\n" not in figure("resnet5m_accuracy_vs_params")["title"]


def test_report_defaults_are_the_folders_run_py_writes(tmp_path, monkeypatch):
    """Run from another working directory, the report still reads the repository's runs/
    and searches/ (where run.py and tune.py write), and writes beside them in
    runs/report/: the published reports/ only when named."""
    from experiments import report, run, tune

    monkeypatch.chdir(tmp_path)
    defaults = report.parse_args([])
    assert defaults.runs == run.parse_args(["resnet20"]).output_dir
    assert defaults.searches == tune.parse_args(["optimizer"]).directory
    assert defaults.out == os.path.join(ROOT, "runs", "report")


def test_a_report_that_fails_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    """All of a report's files or none: a figure that fails to draw leaves the
    earlier RESULTS.md and figures untouched, and no staging folder behind."""
    from experiments import report
    from plots import report_figures

    runs, out = str(tmp_path / "runs"), tmp_path / "out"
    write_record(runs, "cnn_baseline", "seed0", 0.66, 0.65)
    (out / "figures").mkdir(parents=True)
    (out / "RESULTS.md").write_text("before\n")
    (out / "figures" / "kept.png").write_bytes(b"png")

    def broken(*args, **kwargs):
        raise RuntimeError("a figure failed")

    monkeypatch.setattr(report_figures, "write_figures", broken)
    with pytest.raises(RuntimeError):
        report.main(["--runs", runs, "--out", str(out)])
    assert (out / "RESULTS.md").read_text() == "before\n"
    assert sorted(os.listdir(out)) == [".lock", "RESULTS.md", "figures"]
    assert os.listdir(out / "figures") == ["kept.png"]


def test_precision_comparison_passes_recipe_edits_and_summarises_seeds(tmp_path, monkeypatch):
    """benchmarks/precision_accuracy.py: each (precision, seed) goes to run.py with the
    given --set edits; the report holds each run, the means, the spreads and whether
    bf16's distance from fp32 is within twice the seed spread."""
    from benchmarks import precision_accuracy

    accuracy = {("fp32", 0): 0.80, ("fp32", 1): 0.82, ("bf16", 0): 0.79, ("bf16", 1): 0.83}
    commands = []

    def fake_run(command):  # stands in for the run.py child: writes its record
        commands.append(command)
        value = lambda flag: command[command.index(flag) + 1]
        run_dir = tmp_path / "runs" / "resnet20" / value("--run-id")
        run_dir.mkdir(parents=True, exist_ok=True)
        key = (value("--precision"), int(value("--seed")))
        record.write_json(str(run_dir / "metrics.json"), {
            "final_test_accuracy": accuracy[key], "train_images_per_second": 100.0,
            "train_seconds": 5.0})
        record.write_json(str(run_dir / "config.json"), {"backend": "tensorflow",
                                                          "data_source": "test images"})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(precision_accuracy.subprocess, "run", fake_run)
    output = tmp_path / "precision.json"
    assert precision_accuracy.main([
        "--data-dir", str(tmp_path), "--seeds", "0", "1", "--epochs", "2",
        "--train-images", "64", "--set", "schedule.boundaries=[10,20]",
        "--output-dir", str(tmp_path / "runs"), "--json", str(output)]) == 0
    assert len(commands) == 4
    for command in commands:
        assert command[command.index("--epochs") + 1] == "2"
        sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
        assert sets == ["train_images=64", "schedule.boundaries=[10,20]"]
    saved = json.loads(output.read_text())
    assert saved["edits"] == ["schedule.boundaries=[10,20]"] and len(saved["runs"]) == 4
    fp32, bf16 = saved["summary"]["fp32"], saved["summary"]["bf16"]
    assert fp32["mean_test_accuracy"] == pytest.approx(0.81)
    assert bf16["mean_test_accuracy"] == pytest.approx(0.81)
    assert bf16["stdev_test_accuracy"] == pytest.approx(0.02 * 2 ** 0.5)
    assert bf16["difference_from_fp32"] == pytest.approx(0.0) and bf16["within_noise"] is True
    table = (tmp_path / "precision.md").read_text()
    assert "Recipe edits: schedule.boundaries=[10,20]." in table and "| bf16 | 1 | 0.8300 |" in table


def test_precision_comparison_says_when_a_run_did_not_start(tmp_path):
    """A run refused before it starts (here: no data) leaves no record to point at."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "precision_accuracy.py"),
         "--data-dir", str(tmp_path / "missing"), "--seeds", "0", "--precision", "fp32",
         "--output-dir", str(tmp_path / "runs"), "--json", str(tmp_path / "precision.json")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cifar-10-python.tar.gz" in result.stderr  # run.py's own message
    assert "the fp32-seed0 run did not start" in result.stderr
    assert not os.path.exists(tmp_path / "precision.json")


def test_runs_are_averaged_only_with_runs_of_the_same_setting(tmp_path):
    """bf16 runs and runs validated on a held-out split get rows of their own, so no
    mean mixes them into the papers' setting (fp32, the test set validating)."""
    from experiments import report

    runs = str(tmp_path / "runs")
    write_record(runs, "cnn_baseline", "seed0", 0.70, 0.69)
    write_record(runs, "cnn_baseline", "seed1", 0.72, 0.71)
    edits = {"bf16": ({"precision": "bf16", "backend": "torch"}, {}),
             "held": ({}, {"validation_is_test": False})}
    for run_id, (config_edit, metrics_edit) in edits.items():
        folder = write_record(runs, "cnn_baseline", run_id, 0.50, 0.50)
        for name, edit in (("config.json", config_edit), ("metrics.json", metrics_edit)):
            path = os.path.join(folder, name)
            record.write_json(path, {**record.read_json(path), **edit})
    loaded, problems = report.load_runs(runs)
    assert not problems
    rows = {(row["precision"], row["validation_is_test"]): row for row in report.summarise(loaded)}
    assert set(rows) == {("fp32", True), ("bf16", True), ("fp32", False)}
    assert rows[("fp32", True)]["n"] == 2 and rows[("fp32", True)]["best_test_accuracy"] == pytest.approx(71.0)
    assert rows[("bf16", True)]["backend"] == "torch" and rows[("bf16", True)]["n"] == 1
    text = report.results_markdown(report.summarise(loaded), [])
    assert "| cnn_baseline | **full** (bf16) | 1 |" in text
    # The figures' means follow the rows: the bf16 run is not in the fp32 bar.
    from plots.report_figures import mean_percent, representative

    chosen = representative(loaded)["cnn_baseline"]
    assert chosen.precision == "fp32" and mean_percent(loaded, chosen, "best_test_accuracy") == pytest.approx(71.0)


def test_a_search_section_sets_its_full_training_beside_the_base_recipe(tmp_path):
    """cnn_regularization's best trial trained in full (cnn_searched, selected on held-out
    images) sits beside cnn_regularized's full run and the paper's number; a quick run
    of it is no full training, and a search with no such experiment gets no table."""
    from experiments import report

    runs = str(tmp_path / "runs")
    write_record(runs, "cnn_regularized", "seed0", 0.80, 0.79, data="jpeg_rebuild")
    write_record(runs, "cnn_searched", "seed9", 0.30, 0.30, quick=True)
    trial = {"trial_id": "19", "status": "completed", "score": 0.67, "epochs": 9, "seconds": 400.0,
             "hyperparameters": {"batch_size": 64}, "edits": ["batch_size=64", "epochs=9"]}
    search = {"search": "cnn_regularization", "base": "cnn_regularized", "trials": [trial]}

    def section(search):
        loaded, problems = report.load_runs(runs)
        assert not problems
        return "\n".join(report.search_details(search, report.summarise(loaded)))

    assert "Trained in full as `cnn_searched`: no finished run yet " \
           "(`python experiments/run.py cnn_searched`)." in section(search)
    folder = write_record(runs, "cnn_searched", "seed0", 0.85, 0.84, data="jpeg_rebuild")
    path = os.path.join(folder, "metrics.json")
    record.write_json(path, {**record.read_json(path), "validation_is_test": False})
    text = section(search)
    rows = [line for line in text.splitlines() if line.startswith("| cnn_")]
    assert rows == ["| cnn_regularized | 1 | JPEG rebuild | 100 / 100 | 79.00 | 80.00 | yes | 84.00 |",
                    "| cnn_searched | 1 | JPEG rebuild | 100 / 100 | 84.00 | 85.00 | no | - |"]
    assert "Trained in full" not in section({**search, "search": "resnet_budget",
                                             "base": "resnet5m_row6"})


def test_report_names_the_data_and_refuses_unfinished_records(tmp_path):
    """Rows say which images trained; a gap beyond the seed spread plus the JPEG
    rebuild's allowance is marked; a record short of its own recipe's epochs, or
    not completed, is named and skipped, while a deliberately short run (--epochs)
    is reported as short."""
    from experiments import report

    runs = str(tmp_path / "runs")
    write_record(runs, "cnn_baseline", "seed0", 0.66, 0.65, data="jpeg_rebuild")  # -2: within 1 + 4
    write_record(runs, "resnet_step", "seed0", 0.80, 0.79, data="jpeg_rebuild")  # -13.4: beyond
    write_record(runs, "cnn_vgg3", "seed0", 0.7, 0.7, history_epochs=40)  # 40 of 100 rows
    running = write_record(runs, "cnn_l2", "seed0", 0.7, 0.7)
    record.write_status(running, "running")
    write_record(runs, "noisy_labels_symmetric40", "seed0", 0.6, 0.55, epochs=15,
                 noise=("symmetric", 0.4), data="jpeg_rebuild", train_images=3000)
    loaded, problems = report.load_runs(runs)
    assert sorted(run.experiment for run in loaded) == [
        "cnn_baseline", "noisy_labels_symmetric40", "resnet_step"]
    assert problems == ["cnn_l2/seed0: status running, skipped",
                        "cnn_vgg3/seed0: 40 of its 100 epochs' rows in history.csv, though the "
                        "run finished, skipped (the rows are lost with the finished run's "
                        "backup: train it again with run.py --run-id NAME)"]
    rows = {row["experiment"]: row for row in report.summarise(loaded)}
    assert rows["cnn_baseline"]["data"] == "jpeg_rebuild" and not rows["cnn_baseline"]["beyond_allowance"]
    assert rows["resnet_step"]["beyond_allowance"]
    assert rows["noisy_labels_symmetric40"]["kind"] == "short: 15 of 50 epochs, 3,000 training images"
    assert rows["noisy_labels_symmetric40"]["gap"] is None
    text = report.results_markdown(report.summarise(loaded), problems)
    assert "| cnn_baseline | **full** | 1 | JPEG rebuild |" in text
    assert "| -13.36 † |" in text and "80.00 (best test) | 93.36 |" in text
    table = report.readme_table(report.summarise(loaded))
    assert "| resnet_step | 93.36 | 80.00 (best test) | 79.00 | 1 | JPEG rebuild | 100 / 100 | full |" in table
    assert ("| noisy_labels_symmetric40 | - | 60.00 (best test) | 55.00 | 1 | JPEG rebuild | 15 / 50 "
            "| short, 3,000 training images |") in table
    # The label-noise section: the last epoch's accuracy on the flipped training images,
    # against their true labels (0.5 - 0.55 / 4) and their noisy ones (0.55 / 2).
    assert ("| noisy_labels_symmetric40 | short: 15 of 50 epochs, 3,000 training images | 1 | "
            "symmetric 40% | 15 / 50 | 55.00 | 60.00 | 36.25 | 27.50 |") in text
    assert report.noise_table([rows["cnn_baseline"]]) == ""  # no noise, no section


def test_report_writes_the_readme_table_between_its_markers(tmp_path):
    from experiments import report

    runs = str(tmp_path / "runs")
    write_record(runs, "cnn_baseline", "seed0", 0.66, 0.65, data="jpeg_rebuild")
    parity_dir = tmp_path / "parity"
    parity_dir.mkdir()
    verdicts = {"keras": {"mean": 0.5, "std": 0.01}, "reference_side": {"mean": 0.49, "std": 0.02},
                "difference": 0.01, "welch_p": 0.4, "verdict": "same within noise",
                "reference": "he2015_resnet", "epochs": 4, "train_images": 5000, "seeds": 3}
    record.write_json(str(parity_dir / "parity_resnet20.json"), {"case": "resnet20", **verdicts})
    record.write_json(str(parity_dir / "parity_resnet20_lr10.json"),
                      {"case": "resnet20", **verdicts, "lr_factor": 10.0, "verdict": "differs"})
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{report.README_START}\nold table\n{report.README_END}\nmiddle\n"
                      f"{report.PARITY_START}\nold\n{report.PARITY_END}\nrest\n")
    out = str(tmp_path / "reports")
    command = [sys.executable, REPORT, "--runs", runs, "--out", out, "--parity", str(parity_dir),
               "--readme", str(readme)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    text = readme.read_text()
    summary = json.load(open(os.path.join(out, "results.json")))
    parity = report.parity_table(report.load_parity(str(parity_dir)))
    assert text == (f"# top\n\n{report.README_START}\n{report.readme_table(summary)}\n"
                    f"{report.README_END}\nmiddle\n{report.PARITY_START}\n{parity}\n"
                    f"{report.PARITY_END}\nrest\n")
    assert parity.splitlines()[2].startswith("| resnet20 | `he2015_resnet` | 4 / 5,000 / 3 | 50.00 ± 1.00")
    assert "| resnet20 (Keras lr x10, broken on purpose) |" in parity.splitlines()[3]
    assert "## Parity with the authors' training loops" in open(os.path.join(out, "RESULTS.md")).read()
    readme.write_text("no markers\n")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "has no block" in result.stderr
    assert readme.read_text() == "no markers\n"


def test_committed_results_reproduce_the_committed_report(tmp_path):
    """reports/RESULTS.md and reports/results.json are what report.py makes of the
    committed results/ alone, and the README's table is the one they give."""
    from experiments import report

    out = str(tmp_path / "reports")
    result = subprocess.run([sys.executable, REPORT, "--runs", os.path.join(ROOT, "results"),
                             "--out", out], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("RESULTS.md", "results.json"):
        with open(os.path.join(out, name)) as made, open(os.path.join(ROOT, "reports", name)) as kept:
            assert made.read() == kept.read(), f"reports/{name} is stale: rerun {README_COMMAND}"
    with open(os.path.join(ROOT, "reports", "results.json")) as stream:
        table = report.readme_table(json.load(stream))
    with open(os.path.join(ROOT, "README.md")) as stream:
        readme = stream.read()
    block = readme.split(report.README_START)[1].split(report.README_END)[0]
    assert block.strip() == table, f"README's results table is stale: rerun {README_COMMAND}"
    parity = report.parity_table(report.load_parity(os.path.join(ROOT, "reports")))
    block = readme.split(report.PARITY_START)[1].split(report.PARITY_END)[0]
    assert block.strip() == parity, f"README's parity table is stale: rerun {README_COMMAND}"


README_COMMAND = "python experiments/report.py --runs results --out reports --readme README.md"


def test_collect_copies_finished_records_without_weights(tmp_path):
    from experiments import collect

    runs, target = str(tmp_path / "runs"), str(tmp_path / "results")
    done = write_record(runs, "cnn_baseline", "seed0", 0.7, 0.69)
    for name in ("best.keras", "noise.npz"):
        open(os.path.join(done, name), "w").close()
    os.makedirs(os.path.join(done, "backup"))
    running = write_record(runs, "cnn_vgg3", "seed0", 0.7, 0.69)
    record.write_status(running, "running")
    copied, skipped = collect.collect(runs, target)
    assert copied == ["cnn_baseline/seed0"] and skipped == ["cnn_vgg3/seed0 (running)"]
    assert sorted(os.listdir(os.path.join(target, "cnn_baseline", "seed0"))) == [
        "accuracy.json", "accuracy.png", "config.json", "history.csv", "loss.json", "loss.png",
        "lr.json", "lr.png", "metrics.json", "status.json"]


def test_a_record_written_before_the_typed_specs_still_resumes_and_reports(tmp_path):
    """tests/data/config_before_typed_specs.json is a real run's config.json, written
    (commit 15bb4df) when recipe sections were plain dicts without their defaults:
    today's recipe check accepts it for a resume, and the report calls it full."""
    from experiments import report
    from training import engine

    saved = record.read_json(os.path.join(ROOT, "tests", "data", "config_before_typed_specs.json"))
    recipe = EXPERIMENTS[saved["experiment"]]
    assert saved["recipe"]["optimizer"] == {"learning_rate": 0.001, "name": "adam", "style": "keras"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record.write_json(str(run_dir / "config.json"), saved)
    config = {**saved, "recipe": recipe.to_dict()}
    engine._check_existing(str(run_dir), config)  # raises RunError on a changed recipe
    changed = {**config, "recipe": {**recipe.to_dict(), "epochs": 11}}
    with pytest.raises(engine.RunError, match="different recipe"):
        engine._check_existing(str(run_dir), changed)
    folder = write_record(str(tmp_path / "runs"), saved["experiment"], "seed0", 0.5, 0.49)
    record.write_json(os.path.join(folder, "config.json"), saved)
    loaded, problems = report.load_runs(str(tmp_path / "runs"))
    assert not problems and loaded[0].kind == "full"
