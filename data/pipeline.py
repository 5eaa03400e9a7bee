"""Batches for `model.fit`: a `keras.utils.PyDataset`, so one pipeline serves the
TensorFlow, JAX and PyTorch backends.

The order of epoch e and the augmentation of batch i of epoch e depend only on
(seed, e, i). That makes runs reproducible and lets a resumed run see the data
exactly as an uninterrupted one would: the trainer sets the epoch through
callbacks.EpochSync before each epoch, and Keras's own batch shuffling stays off.

It also lets batches be built in any thread. With `threads=N` (N > 1), asking
for batch i of epoch e hands back that batch and starts building the next
2N batches of epoch e in a pool of N threads, so that they are ready when the
step asks (NumPy and Pillow release the GIL in their loops, so the threads
run in parallel, and on a GPU they build while the device trains). The
batches are those of one thread, bit for bit (tested). Keras's own
`workers=N` does not fit: its OrderedEnqueuer draws batches before the epoch's
callbacks run (the JAX and PyTorch trainers take one to build the model) and
keeps the ones it had prefetched for the next epoch, so an epoch could start
with the wrong epoch's batches.
"""

import concurrent.futures
import math
import os
import threading
import time

import keras
import numpy as np

MAX_AUTO_INPUT_THREADS = 8


def input_threads(requested=0):
    """Threads that build training batches: `requested` when it is positive,
    else half this machine's cores, 1 to 8 (the other half stays with the
    backend's own threads). 1 builds each batch in the training loop itself."""
    if requested < 0:
        raise ValueError(f"input threads must be 0 (automatic) or more; got {requested}.")
    if requested:
        return int(requested)
    return max(1, min(MAX_AUTO_INPUT_THREADS, (os.cpu_count() or 1) // 2))


class CifarBatches(keras.utils.PyDataset):
    def __init__(
        self, images, labels, num_classes, batch_size, *, augment=None,
        normalize=None, mix=None, shuffle=False, seed=0, threads=1, label_column=False, **kwargs,
    ):
        super().__init__(**kwargs)
        if threads < 1:
            raise ValueError(f"threads must be at least 1; got {threads}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        self.images, self.labels = images, labels
        self.num_classes, self.batch_size = num_classes, batch_size
        self.augment, self.normalize, self.mix = augment, normalize, mix
        # Seconds spent building batches, summed over the threads that build them;
        # reset each epoch.
        self.input_seconds = 0.0
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self._order_cache = (None, None)  # (epoch, order), replaced as one object
        self.threads = threads
        # One more label column, each image's own class (training.losses): mixup runs.
        self.label_column = label_column
        self._pool = None
        self._pending = {}  # (epoch, index) -> Future of a batch being built ahead
        self._lock = threading.Lock()

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def order(self, epoch):
        """The sample order of `epoch`."""
        cached_epoch, order = self._order_cache
        if cached_epoch != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.images))
            else:
                order = np.arange(len(self.images))
            self._order_cache = (epoch, order)
        return order

    def batch(self, epoch, index):
        """Batch `index` of `epoch`: a function of (seed, epoch, index) alone."""
        start = time.perf_counter()
        built = self.make(epoch, index)
        seconds = time.perf_counter() - start
        with self._lock:
            self.input_seconds += seconds
        return built

    def picked(self, epoch, index):
        """The indices of batch `index` of `epoch`."""
        return self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def one_hot(self, picked):
        return np.eye(self.num_classes, dtype=np.float32)[self.labels[picked]]

    def labels_out(self, y, picked):
        """The labels as the loss takes them: with each image's own class as one more
        column in mixup runs (training.losses)."""
        if self.label_column:
            y = np.concatenate([y, self.labels[picked, None].astype(np.float32)], axis=1)
        return y

    def make(self, epoch, index):
        picked = self.picked(epoch, index)
        x = self.images[picked]
        if self.augment:
            x = self.augment(x, np.random.default_rng([self.seed, epoch, 1, index]))
        x = self.normalize(x) if self.normalize else x.astype(np.float32)
        y = self.one_hot(picked)
        if self.mix:
            x, y = self.mix(x, y, self.seed, epoch, index)
        return x, self.labels_out(y, picked)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        if self.threads == 1:
            return self.batch(self.epoch, index)
        epoch = self.epoch
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix="cifar-batches")
            future = self._pending.pop((epoch, index), None)
            # Batches behind this one or of another epoch will not be asked for.
            for key in [key for key in self._pending if key[0] != epoch or key[1] < index]:
                self._pending.pop(key).cancel()
            for ahead in range(index + 1, min(index + 1 + 2 * self.threads, len(self))):
                if (epoch, ahead) not in self._pending:
                    self._pending[epoch, ahead] = self._pool.submit(self.batch, epoch, ahead)
        return future.result() if future is not None else self.batch(epoch, index)

    def close(self):
        """Stops the threads (after the batches they are building)."""
        with self._lock:
            pool, self._pool = self._pool, None
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=True)
