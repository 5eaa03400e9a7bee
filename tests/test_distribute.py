"""Data-parallel training on two CPU replicas: TensorFlow's MirroredStrategy and
MultiWorkerMirroredStrategy, and keras.distribution.DataParallel on JAX. Every
case runs in fresh processes, since a strategy must exist before the backend
initialises its devices."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "experiments", "run.py")
STEP = os.path.join(ROOT, "tests", "distribute_step.py")
TWO_HOST_DEVICES = "--xla_force_host_platform_device_count=2"
BACKEND = {"mirrored": "tensorflow", "data-parallel": "jax", "multi-worker": "tensorflow"}


def environment(kind, **extra):
    return {**os.environ, "KERAS_BACKEND": BACKEND[kind], "XLA_FLAGS": TWO_HOST_DEVICES,
            "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def helper(kind, *args):
    result = subprocess.run([sys.executable, STEP, kind, *args], capture_output=True, text=True,
                            env=environment(kind), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def quick_run(kind, data, out, *extra, env=None):
    return subprocess.run([sys.executable, RUN, "cnn_baseline", "--quick", "--data-dir", data,
                           "--output-dir", out, "--distribute", kind, *extra],
                          capture_output=True, text=True, env=env or environment(kind), timeout=300)


def config_of(out, run_id="seed0-quick"):
    with open(os.path.join(out, "cnn_baseline", run_id, "config.json")) as stream:
        return json.load(stream)


@pytest.mark.parametrize("kind", ["mirrored", "data-parallel"])
def test_one_step_on_two_replicas_equals_one_step_on_one_device(kind):
    result = helper(kind)
    assert result["replicas"] == 2
    assert result["devices"] == [1, 2]  # the replicated model's weights live on both devices
    assert result["max_update"] > 1e-3  # the step moved the weights
    assert result["max_difference"] < 1e-5


@pytest.mark.parametrize("kind", ["mirrored", pytest.param("data-parallel", marks=pytest.mark.slow)])
def test_quick_run_on_two_replicas_and_its_checkpoint_on_one_device(kind, shared_cifar10, tmp_path):
    out = str(tmp_path)
    result = quick_run(kind, shared_cifar10, out)
    assert result.returncode == 0, result.stderr[-3000:]
    config = config_of(out)
    assert (config["distribute"], config["replicas"], config["backend"]) == (kind, 2, BACKEND[kind])
    run_dir = os.path.join(out, "cnn_baseline", "seed0-quick")
    with open(os.path.join(run_dir, "status.json")) as stream:
        assert json.load(stream)["status"] == "completed"
    best = os.path.join(run_dir, "best.keras")
    model = keras.models.load_model(best)  # one device, this process's backend
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 10)
    back = helper(kind, "--load", best)  # and back under the strategy
    assert back["devices"] == 2 and back["max_difference"] < 1e-4


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multi_worker_run_with_two_workers_on_loopback(shared_cifar10, tmp_path):
    out = str(tmp_path)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # One CPU device per worker: two replicas in all.
        env = {**environment("multi-worker"), "XLA_FLAGS": "", "TF_CONFIG": config}
        workers.append(subprocess.Popen(
            [sys.executable, RUN, "cnn_baseline", "--quick", "--data-dir", shared_cifar10,
             "--output-dir", out, "--distribute", "multi-worker"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][1][-2000:]
    config = config_of(out)
    assert (config["distribute"], config["replicas"]) == ("multi-worker", 2)
    with open(os.path.join(out, "cnn_baseline", "seed0-quick", "metrics.json")) as stream:
        assert json.load(stream)["epochs_run"] == 2
    # The second worker trained too, but its record, plots included, stays out of the chief's.
    worker = os.path.join(out, ".workers", "worker1", "cnn_baseline", "seed0-quick")
    assert os.path.exists(os.path.join(worker, "history.csv"))
    assert os.path.exists(os.path.join(worker, "loss.png"))


@pytest.mark.parametrize("kind, env, extra, message", [
    ("data-parallel", {"KERAS_BACKEND": "tensorflow"}, [], "runs on the jax backend"),
    ("mirrored", {"XLA_FLAGS": ""}, [], "XLA_FLAGS=--xla_force_host_platform_device_count=2"),
    ("multi-worker", {"TF_CONFIG": ""}, [], "reads the cluster from TF_CONFIG"),
    ("mirrored", {}, ["--batch-size", "33"], "does not split over 2 replicas"),
])
def test_strategies_that_cannot_run_say_why(kind, env, extra, message, shared_cifar10, tmp_path):
    result = quick_run(kind, shared_cifar10, str(tmp_path), *extra,
                       env={**environment(kind), **env})
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
