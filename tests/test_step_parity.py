"""benchmarks/step_parity.py: run.py's training step against the authors' on the
PyTorch twin, and that it reads a broken step as broken."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.step_parity import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a process of its own on the PyTorch backend; "broken" drops the momentum
# (the weights from step 2 on) and takes Keras's biased moving variance (the
# statistics from step 1 on).
STEPS_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from benchmarks import step_parity
from experiments import recipes
from models import layers
from training.recipe import apply_override

rows = {{"as built": step_parity.measure("resnet20", steps=2, batch=4)}}
recipes.EXPERIMENTS["resnet20"] = apply_override(recipes.EXPERIMENTS["resnet20"],
                                                 "optimizer.momentum=0")
layers.TORCH_BN["unbiased_moving_variance"] = False
rows["broken"] = step_parity.measure("resnet20", steps=2, batch=4)
print(json.dumps(rows))
"""


def test_run_py_steps_as_the_authors_loop_and_a_broken_step_shows():
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-c", STEPS_SCRIPT.format(root=ROOT)],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    built, broken = rows["as built"], rows["broken"]
    for way in ("keras", "torch_float32"):  # float32 rounding, measured about 1e-6
        for part in ("weights", "statistics"):
            errors = built[f"{way}_{part}"]
            assert len(errors) == 2 and all(0.0 < e < 1e-4 for e in errors), (way, part, errors)
    assert broken["keras_weights"][0] < 1e-4  # the first step has no momentum to lose
    assert broken["keras_weights"][1] > 0.1, broken
    assert min(broken["keras_statistics"]) > 1e-3, broken
    assert broken["torch_float32_weights"] == built["torch_float32_weights"]


def test_unknown_case_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["resnet21", "--json", str(tmp_path / "x.json")])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "resnet21" in error and "se_resnet_mixup" in error
    assert not (tmp_path / "x.json").exists()
