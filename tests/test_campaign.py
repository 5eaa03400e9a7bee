"""experiments/campaign.py's plan from measured epoch times, and a dry run of the
GPU slice script (benchmarks/gpu_slice.sh) on the CPU with a tiny budget."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def times_file(path, cases):
    """An epochs.py JSON: {experiment: (epoch seconds list, side_by_side)}."""
    path.write_text(json.dumps({"cases": [
        {"experiment": name, "train_images": 50000, "input_threads": 8, "side_by_side": k,
         "epochs": [{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)]}
        for name, (seconds, k) in cases.items()]}))
    return str(path)


def test_plan_fills_k_slots_in_queue_order_from_measured_epochs(tmp_path, capsys):
    from experiments.campaign import main

    times = times_file(tmp_path / "times.json", {"resnet_deep": ([10.0, 4.0, 4.0], 1),
                                                 "modified_resnet": ([5.0, 5.0], 1),
                                                 "resnet_step": ([3.0, 3.0], 1)})
    queue = "resnet_deep,modified_resnet,resnet20,resnet_step"
    assert main(["--plan", "700", "--times", times, "--queue", queue]) == 0
    out = capsys.readouterr().out
    # resnet_deep: 100 epochs x 4 s + 6 s of first-epoch compilation; modified_resnet after
    # it: 50 x 5 s; resnet_step's 300 s start at 656 s and end past 700 - 20.
    assert "| resnet_deep | 100 | 406 | 0 | 406 | yes |" in out
    assert "| modified_resnet | 50 | 250 | 406 | 656 | yes |" in out
    assert "| resnet20 | 164 | not measured | - | - | unknown |" in out
    assert "| resnet_step | 100 | 300 | 656 | 956 | no: resumes next slice |" in out
    assert "2 finish: resnet_deep, modified_resnet." in out
    assert main(["--plan", "700", "--times", times, "--queue", queue, "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "| modified_resnet | 50 | 250 | 0 | 250 | yes |" in out
    assert "| resnet_step | 100 | 300 | 250 | 550 | yes |" in out
    assert main(["--plan", "700", "--times", times, "--queue", "resnet_dep"]) == 2


def test_gpu_slice_dry_run_on_the_cpu(shared_cifar10, tmp_path):
    """The slice script as a slice runs it, with quick runs of two small CNNs: the
    machine's description, the plan, both runs finished, and at most 8 files whose
    tarball holds the records without weights."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    times = times_file(tmp_path / "times.json", {"cnn_vgg2": ([2.0, 1.0], 1),
                                                 "cnn_vgg3": ([2.0, 1.0], 1)})
    env = {**os.environ, "DATA_DIR": shared_cifar10, "RUNS": str(runs), "TIMES": times,
           "QUEUE": "cnn_vgg2,cnn_vgg3", "MEASURE": "", "RUN_ARGS": "--quick",
           "PROFILE": "cnn_vgg2", "PROFILE_ARGS": "--steps 2 --set train_images=256",
           "PYTHON": sys.executable,
           "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_slice.sh"), str(out),
                             "400"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and {"environment.txt", "plan.md", "campaign.md", "campaign.json",
                                "records.tar.gz"} <= set(files), files
    assert "device: CPU" in (out / "environment.txt").read_text()
    profile = json.loads((out / "step_profile.json").read_text())
    assert [case["path"] for case in profile["cases"]] == ["host", "device"]
    assert "| device |" in (out / "step_profile.md").read_text()
    summary = json.loads((out / "campaign.json").read_text())
    assert [(r["experiment"], r["status"]) for r in summary["runs"]] == [
        ("cnn_vgg2", "completed"), ("cnn_vgg3", "completed")]
    with tarfile.open(out / "records.tar.gz") as archive:
        names = archive.getnames()
    assert "results/cnn_vgg2/seed0/metrics.json" in names and "logs/cnn_vgg3.log" in names
    assert "report/RESULTS.md" in names
    assert not [n for n in names if n.endswith((".keras", ".h5"))]


def test_device_kit_stages_the_wheels_and_data_a_slice_carries(tmp_path):
    """benchmarks/device_kit.sh: Keras and KerasTuner at requirements.txt's pins and the
    dependencies the GPU image lacks, as Python 3.12 wheels, and the JPEG copy with its
    tool; a missing shared folder is refused with what to pass."""
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "tools").mkdir()
    (shared / "data" / "cifar10-jpeg.tar.gz").write_bytes(b"jpeg copy")
    (shared / "tools" / "cifar10_from_jpeg.py").write_text("# the rebuild tool\n")
    script = os.path.join(ROOT, "benchmarks", "device_kit.sh")
    env = {**os.environ, "KIT_DIR": str(tmp_path / "kit"), "SHARED": str(shared),
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = sorted(os.listdir(tmp_path / "kit" / ".whl"))
    pins = dict(line.split("#")[0].strip().split("==") for line in
                open(os.path.join(ROOT, "requirements.txt")) if "==" in line)
    assert f"keras-{pins['keras']}-py3-none-any.whl" in wheels
    assert f"keras_tuner-{pins['keras-tuner']}-py3-none-any.whl" in wheels
    assert [name.split("-")[0] for name in wheels] == ["keras", "keras_tuner", "kt_legacy",
                                                        "namex", "optree"]
    assert "-cp312-" in next(name for name in wheels if name.startswith("optree"))
    assert sorted(os.listdir(tmp_path / "kit" / ".cifar")) == ["cifar10-jpeg.tar.gz",
                                                               "cifar10_from_jpeg.py"]
    missing = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60,
                             env={**env, "SHARED": str(tmp_path / "nowhere")})
    assert missing.returncode == 2 and "pass SHARED=" in missing.stderr
