"""benchmarks/parity.py and benchmarks/reference/: the verdict on synthetic
distributions, the schedule compression, the authors' networks against the
suite's counts, their test-time inputs against the suite's normalisation, and
the harness end to end on a tiny size (with torchvision)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import parity
from experiments.recipes import EXPERIMENTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "benchmarks", "reference")


def test_verdict_passes_the_same_and_fails_a_shift():
    rng = np.random.default_rng(0)
    same = parity.verdict(list(0.80 + rng.normal(0, 0.01, 3)), list(0.80 + rng.normal(0, 0.01, 3)))
    assert same["verdict"] == "same within noise" and same["welch_p"] >= 0.05
    shifted = parity.verdict([0.80, 0.81, 0.79], [0.70, 0.71, 0.69])
    assert shifted["verdict"] == "differs" and shifted["welch_p"] < 0.05
    assert shifted["difference"] == pytest.approx(0.10)
    # Significant but within twice the spread is still noise, and so is a large but noisy gap.
    assert parity.verdict([0.80, 0.81, 0.82], [0.79, 0.80, 0.81])["verdict"] == "same within noise"
    assert parity.verdict([0.9, 0.5, 0.7], [0.4, 0.6, 0.5])["verdict"] == "same within noise"
    constant = parity.verdict([0.5, 0.5], [0.5, 0.5])
    assert constant["verdict"] == "same within noise" and constant["welch_p"] == 1.0


def test_a_finished_seed_is_reused_only_for_the_same_spec(tmp_path):
    path = tmp_path / "keras-parity-seed0.json"
    assert parity.finished_seed(str(path), {"command": ["resnet20"]}) is None
    path.write_text(json.dumps({"spec": {"command": ["resnet20", "--seed", "0"]}, "seconds": 5}))
    assert parity.finished_seed(str(path), {"command": ["resnet20", "--seed", "0"]})["seconds"] == 5
    assert parity.finished_seed(str(path), {"command": ["resnet20", "--seed", "1"]}) is None
    path.write_text('{"spec": {"comm')  # cut off mid-write
    assert parity.finished_seed(str(path), {"command": ["resnet20", "--seed", "0"]}) is None


def test_both_sides_compress_the_schedule_by_one_rule():
    def rule(name, epochs=4, images=5000):
        case = parity.CASES[name]
        return parity.compressed(EXPERIMENTS[case.experiment], case, epochs, images)

    assert rule("resnet5m_row6") == (["schedule.t_max=4.0"], {"t_max": 4.0})  # 200 of 200
    assert rule("mobilenetv2")[1]["gamma"] == pytest.approx(0.98 ** 50)
    assert rule("modified_resnet") == (["schedule.patience=0"], {"patience": 0})
    assert rule("modified_resnet", epochs=20)[1] == {"patience": 2}
    assert rule("resnet5m_row1") == ([], {})  # one-cycle spans the run's epochs
    # He et al.: 32k/48k of 164 x 391 updates; 4 epochs of 40 updates here.
    assert rule("resnet20")[1] == {"milestones": [80, 120]}
    assert rule("se_resnet_mixup")[1] == {"t_max": 4.0, "stop_epoch": 4}
    assert rule("se_resnet_mixup_crossing")[1] == {"t_max": 3.0, "stop_epoch": 3}


@pytest.mark.parametrize("script, variant, model, args", [
    ("paper000_mobilenetv2", None, "mobilenetv2", {"expansion": 7}),
    ("paper001_resnet5m", "row6", "resnet5m", {"row": 6}),
    ("paper001_resnet5m", "row1", "resnet5m", {"row": 1}),
    ("paper002_modified_resnet", None, "modified_resnet", {}),
    ("paper003_se_resnet", None, "se_resnet", {}),
    ("he2015_resnet", None, "resnet20", {}),
])
def test_reference_networks_have_the_suites_parameter_counts(script, variant, model, args):
    from models import build_model, count_params

    pytest.importorskip("torch")
    paper = parity.reference_paper(parity.Case(experiment=model, script=script, variant=variant))
    network = paper.network({"variant": variant})
    torch_count = sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert torch_count == count_params(build_model(model, 10, **args))[0]


INPUTS_SCRIPT = """
import json, sys
import numpy as np
sys.path[:0] = [{root!r}, {reference!r}]
from benchmarks import parity
import common
from data.cifar import load_cifar
from experiments.recipes import EXPERIMENTS

worst = {{}}
data = load_cifar("cifar10", {data!r})
for name in ("mobilenetv2", "resnet5m_row6", "resnet5m_row1", "modified_resnet",
             "se_resnet_mixup", "resnet20"):
    case = parity.CASES[name]
    paper = parity.reference_paper(case)
    paper.train_transform({{"variant": case.variant, "train_images": 0, "data_dir": {data!r}}})
    dataset = common.Images(data.x_test, data.y_test, paper.test_transform(), paper.as_image)
    theirs = np.stack([dataset[i][0].numpy().transpose(1, 2, 0) for i in range(len(dataset))])
    recipe = EXPERIMENTS[case.experiment]
    ours = recipe.normalization.build().fit(data.x_train)(data.x_test)
    worst[name] = float(np.max(np.abs(theirs - ours) / np.maximum(np.abs(ours), 1)))
print(json.dumps(worst))
"""


def test_reference_test_inputs_equal_the_suites_normalisation(shared_cifar10):
    """At test time both sides must see the same numbers: each script's torchvision
    test transform against the suite's Normalizer on the same images. In a process
    of its own, without TensorFlow (which and torchvision's CUDA build do not load
    together)."""
    pytest.importorskip("torchvision", reason="the reference side needs torchvision "
                                              "(pip install -r requirements-bench.txt)")
    code = INPUTS_SCRIPT.format(root=ROOT, reference=REFERENCE, data=shared_cifar10)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    worst = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(worst) == 6 and max(worst.values()) < 1e-5, worst


def test_the_harness_end_to_end_on_a_tiny_size(shared_cifar10, tmp_path):
    pytest.importorskip("torchvision", reason="the reference side needs torchvision "
                                              "(pip install -r requirements-bench.txt)")
    out = tmp_path / "parity.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "parity.py"), "resnet20", "--epochs",
         "1", "--train-images", "200", "--eval-images", "40", "--seeds", "2", "--data-dir",
         shared_cifar10, "--json", str(out), "--output-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(out.read_text())
    assert [(run["side"], run["seed"]) for run in saved["runs"]] == [
        ("keras", 0), ("reference", 0), ("keras", 1), ("reference", 1)]
    assert all(len(run["history"]) == 1 and 0 <= run["final_test_accuracy"] <= 1
               for run in saved["runs"])
    assert saved["verdict"] in ("same within noise", "differs")
    assert len({run["parameters"] for run in saved["runs"]}) == 1
    assert (tmp_path / "parity.md").exists()
    assert (tmp_path / "figures" / "parity_resnet20_accuracy.png").exists()
    # The same call again reuses every finished seed, measured seconds included.
    again = tmp_path / "again.json"
    command = [str(again) if part == str(out) else part for part in result.args]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(again.read_text())["runs"] == saved["runs"]
