"""Data-parallel training on the backends' own engines.

    none          one device (the default)
    mirrored      tf.distribute.MirroredStrategy over this machine's GPUs (TensorFlow)
    multi-worker  tf.distribute.MultiWorkerMirroredStrategy from TF_CONFIG (TensorFlow)
    data-parallel keras.distribution.DataParallel over the local devices (JAX)

The batch size stays the global batch: each of R replicas gets batch / R
images and the gradients are summed over replicas after each replica's loss
is scaled by 1 / R, so one step equals one step on a single device with the
whole batch (up to BatchNorm, whose statistics are per replica, and float
rounding). Recipes keep their learning rates, so a distributed run trains the
recipe unchanged.

On a CPU-only machine, XLA_FLAGS=--xla_force_host_platform_device_count=N gives
JAX N host devices, and the suite then splits TensorFlow's CPU into N logical
devices as well, so both engines can be tried without accelerators.
"""

import contextlib
import functools
import json
import os
import re

import keras

KINDS = ("none", "mirrored", "multi-worker", "data-parallel")
BACKENDS = {"mirrored": "tensorflow", "multi-worker": "tensorflow", "data-parallel": "jax"}


class DistributeError(ValueError):
    """A strategy this backend or machine cannot run; the message says what to use."""


def host_device_count():
    """N from XLA_FLAGS=--xla_force_host_platform_device_count=N, else 1."""
    match = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                      os.environ.get("XLA_FLAGS", ""))
    return int(match.group(1)) if match else 1


def _split_tensorflow_cpu(tf, count):
    """N logical CPU devices, so MirroredStrategy can be tried on a CPU. Must run
    before TensorFlow initialises its devices (before any op)."""
    cpus = tf.config.list_physical_devices("CPU")  # physical: does not initialise them
    if count > 1 and cpus and tf.config.get_logical_device_configuration(cpus[0]) is None:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # devices already initialised: keep what there is
            pass


def _is_chief(task):
    return task.get("type") == "chief" or (task.get("type") == "worker"
                                           and int(task.get("index", 0)) == 0)


def non_chief_worker(kind):
    """The index of this process's worker when it is a non-chief worker of a
    multi-worker run (from TF_CONFIG), else None."""
    if kind != "multi-worker":
        return None
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}")["task"]
        return None if _is_chief(task) else int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # placement() names the problem


class Placement:
    """Where a run computes: a context to build and compile the model in, and the
    number of replicas. `is_chief` is False on the non-chief workers of a
    multi-worker run, which must not write the shared run record."""

    def __init__(self, kind="none"):
        if kind not in KINDS:
            raise DistributeError(f"--distribute must be one of {', '.join(KINDS)}; got {kind!r}.")
        self.kind = kind
        self.strategy = None
        self.replicas = 1
        self.is_chief = True
        self.worker_index = 0
        backend = keras.backend.backend()
        if kind == "none":
            return
        if BACKENDS[kind] != backend:
            fix = ("KERAS_BACKEND=jax with --distribute data-parallel"
                   if backend == "tensorflow" else
                   "--distribute data-parallel" if backend == "jax" else
                   "KERAS_BACKEND=tensorflow (mirrored, multi-worker) or jax (data-parallel)")
            raise DistributeError(f"--distribute {kind} runs on the {BACKENDS[kind]} backend; this "
                                  f"is {backend}. Use {fix}.")
        if kind == "data-parallel":
            devices = keras.distribution.list_devices()
            if len(devices) < 2:
                raise DistributeError(
                    f"--distribute data-parallel needs at least 2 devices; JAX sees {devices}. On a "
                    "CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=2.")
            self.distribution = keras.distribution.DataParallel(devices=devices)
            self.replicas = len(devices)
            return
        import tensorflow as tf

        if kind == "mirrored":
            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                self.strategy = tf.distribute.MirroredStrategy()
            else:
                _split_tensorflow_cpu(tf, host_device_count())
                cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
                if len(cpus) < 2:
                    raise DistributeError(
                        "--distribute mirrored found no GPU and one CPU device. On a CPU, set "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=2 to split it in two.")
                self.strategy = tf.distribute.MirroredStrategy(cpus)
        else:
            config = os.environ.get("TF_CONFIG")
            if not config:
                raise DistributeError(
                    "--distribute multi-worker reads the cluster from TF_CONFIG, which is not set; "
                    'set it on every worker, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:port", '
                    '"host2:port"]}, "task": {"type": "worker", "index": 0}}\'.')
            try:
                task = json.loads(config)["task"]
            except (ValueError, KeyError, TypeError):
                raise DistributeError(f"TF_CONFIG is not valid JSON with a 'task'; got {config!r}.")
            _split_tensorflow_cpu(tf, host_device_count())
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
            self.worker_index = int(task.get("index", 0))
            self.is_chief = _is_chief(task)
        self.replicas = self.strategy.num_replicas_in_sync

    def scope(self):
        """Build and compile the model inside this."""
        if self.strategy is not None:
            return self.strategy.scope()
        if self.kind == "data-parallel":
            return self.distribution.scope()
        return contextlib.nullcontext()

    def prepare(self, model):
        """Works around keras-team/keras#20585 (Keras 3 with MultiWorkerMirroredStrategy):
        `fit` first reduces a sample batch across workers to build the model
        symbolically, and that reduction fails on a batch's tuple of per-replica
        values. A model that does not remember its strategy skips that step and
        builds when the train step is traced; `fit` then runs in `scope()`, so
        Keras still takes the strategy from the scope."""
        if self.kind == "multi-worker":
            model._distribute_strategy = None
            _patch_multi_worker_mean()
        return model

    def check_batch(self, batch_size):
        if batch_size % self.replicas:
            raise DistributeError(f"the batch size {batch_size} does not split over {self.replicas} "
                                  f"replicas; pass --batch-size with a multiple of {self.replicas}.")

    def describe(self):
        return {"distribute": self.kind, "replicas": self.replicas}


@functools.lru_cache(maxsize=None)
def _patch_multi_worker_mean():
    """Works around the second half of keras-team/keras#20585: under
    MultiWorkerMirroredStrategy, Keras 3 averages each step's logs (scalar loss
    and metric values) over replicas with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on a scalar. Scalars are averaged with axis=None (the mean over
    replicas, as MirroredStrategy's path computes); everything else is left to Keras."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            local = strategy.experimental_local_results(value)
            if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    trainer.reduce_per_replica = reduce_per_replica


@functools.lru_cache(maxsize=None)
def placement(kind="none"):
    """One Placement per kind and process: a TensorFlow strategy (multi-worker above
    all) is created once, before the first op, and shared by a group's runs."""
    return Placement(kind)
