"""experiments/side_by_side.sh: one run.py per experiment, a shared time limit, resume hint."""
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "side_by_side.sh")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash script")


def fake_python(tmp_path, body):
    """An interpreter stand-in that logs its arguments, then runs `body` (shell)."""
    path = tmp_path / "python"
    path.write_text(f'#!/bin/sh\necho "args: $*"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def side_by_side(tmp_path, args, body="exit 0"):
    env = dict(os.environ, PYTHON=fake_python(tmp_path, body))
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=tmp_path)


def test_each_experiment_gets_its_threads_and_the_shared_arguments(tmp_path):
    out = tmp_path / "runs"
    done = side_by_side(tmp_path, ["60", "DATA", str(out), "cnn_vgg3:2", "cnn_l2",
                                   "--", "--epochs", "3"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cnn_vgg3: exit 0", "cnn_l2: exit 0"]
    run_py = os.path.join(ROOT, "experiments", "run.py")
    assert (out / "cnn_vgg3.log").read_text() == (
        f"args: {run_py} cnn_vgg3 --data-dir DATA --output-dir {out} --input-threads 2 --epochs 3\n")
    assert (out / "cnn_l2.log").read_text() == (
        f"args: {run_py} cnn_l2 --data-dir DATA --output-dir {out} --input-threads 0 --epochs 3\n")


def test_a_run_past_the_limit_is_stopped_and_named(tmp_path):
    out = tmp_path / "runs"
    done = side_by_side(tmp_path, ["1", "DATA", str(out), "slow", "fast"],
                        body='[ "$2" = slow ] && exec sleep 30; exit 0')
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "slow: exit 124 (stopped at 1 s; run again to resume)", "fast: exit 0"]


def test_a_failed_run_fails_the_call(tmp_path):
    done = side_by_side(tmp_path, ["60", "DATA", str(tmp_path / "runs"), "broken"], body="exit 3")
    assert done.returncode == 1
    assert done.stdout.strip() == "broken: exit 3"


@pytest.mark.parametrize("args", [[], ["60", "DATA", "OUT"], ["soon", "DATA", "OUT", "cnn_vgg3"],
                                  ["60", "DATA", "OUT", "--", "--epochs", "3"]])
def test_bad_arguments_print_the_usage(tmp_path, args):
    done = side_by_side(tmp_path, args)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "LIMIT_S DATA_DIR OUTPUT_DIR" in done.stderr
    assert not (tmp_path / "OUT").exists()
