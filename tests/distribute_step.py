"""One training step on one device and on the replicas of a strategy, from the
same weights and the same global batch; prints the largest weight difference
as JSON. Run in a fresh process (the strategy needs XLA_FLAGS and, on
TensorFlow, a CPU split before any op):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/distribute_step.py KIND
    ... tests/distribute_step.py KIND --load MODEL.keras   # predictions, one device vs replicas
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models import build_model  # noqa: E402
from training.distribute import placement  # noqa: E402
from training.optimizers import build_optimizer  # noqa: E402

GLOBAL_BATCH = 16


def one_step(model_weights, images, labels):
    # kth_vgg1 has no BatchNorm and no dropout, whose per-replica statistics and
    # masks would make the two steps differ by design.
    model = build_model("kth_vgg1", 10)
    model.set_weights(model_weights)
    # PyTorch-style SGD with momentum and coupled weight decay: the suite's own update.
    model.compile(optimizer=build_optimizer("sgd", learning_rate=0.1, momentum=0.9,
                                            weight_decay=5e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(w) for w in model.weights], devices_holding(model.weights[0])


def devices_holding(variable):
    """How many devices hold a copy of `variable` (1 without a strategy)."""
    value = variable.value
    if keras.backend.backend() == "jax":
        return len(value.sharding.device_set)
    return len(getattr(value, "values", [value]))  # tf.distribute's MirroredVariable


def load_both_ways(where, path):
    """A .keras file loads on one device and under the strategy, with the same predictions."""
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    single = keras.models.load_model(path).predict(images, verbose=0)
    with where.scope():
        replicated_model = keras.models.load_model(path)
        replicated = replicated_model.predict(images, verbose=0)
    print(json.dumps({"replicas": where.replicas, "devices": devices_holding(replicated_model.weights[0]),
                      "max_difference": float(np.abs(single - replicated).max())}))


def main(kind, load=None):
    where = placement(kind)  # before any op
    if load:
        return load_both_ways(where, load)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, GLOBAL_BATCH), 10)
    start = [keras.ops.convert_to_numpy(w) for w in build_model("kth_vgg1", 10).weights]
    single, single_devices = one_step(start, images, labels)
    with where.scope():
        replicated, replicated_devices = one_step(start, images, labels)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, start))
    difference = max(float(np.abs(a - b).max()) for a, b in zip(single, replicated))
    print(json.dumps({"replicas": where.replicas, "max_difference": difference,
                      "devices": [single_devices, replicated_devices],
                      "max_update": moved}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[3] if sys.argv[2:3] == ["--load"] else None)
