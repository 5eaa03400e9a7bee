"""Batches for `model.fit`: a `keras.utils.PyDataset`, so one pipeline serves the
TensorFlow, JAX and PyTorch backends.

The order of epoch e and the augmentation of batch i of epoch e depend only on
(seed, e, i). That makes runs reproducible and lets a resumed run see the data
exactly as an uninterrupted one would: the trainer sets the epoch through
`EpochSync` before each epoch, and Keras's own batch shuffling stays off.
"""

import math
import time

import keras
import numpy as np


class CifarBatches(keras.utils.PyDataset):
    def __init__(
        self, images, labels, num_classes, batch_size, *, augment=None,
        normalize=None, mix=None, shuffle=False, seed=0, **kwargs,
    ):
        super().__init__(**kwargs)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size = num_classes, batch_size
        self.augment, self.normalize, self.mix = augment, normalize, mix
        self.input_seconds = 0.0  # time spent building batches, reset each epoch
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self._order_epoch, self._order = None, None

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def order(self):
        """The sample order of the current epoch."""
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch, 0])
                self._order = rng.permutation(len(self.images))
            else:
                self._order = np.arange(len(self.images))
            self._order_epoch = self.epoch
        return self._order

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = time.perf_counter()
        picked = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.images[picked]
        if self.augment:
            x = self.augment(x, np.random.default_rng([self.seed, self.epoch, 1, index]))
        x = self.normalize(x) if self.normalize else x.astype(np.float32)
        y = np.eye(self.num_classes, dtype=np.float32)[self.labels[picked]]
        if self.mix:
            x, y = self.mix(x, y, self.seed, self.epoch, index)
        self.input_seconds += time.perf_counter() - start
        return x, y


class EpochSync(keras.callbacks.Callback):
    """Tells the training batches which epoch is starting (resumed runs included),
    and logs per epoch the seconds spent building training batches
    (`input_seconds`) and, with a per-epoch mixup gate, whether it was open."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        self.batches.input_seconds = 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["input_seconds"] = self.batches.input_seconds
        mix = self.batches.mix
        if mix is not None and mix.gate == "epoch":
            logs["mixup"] = float(mix.epoch_is_mixed(self.batches.seed, epoch))
