"""Callbacks the suite adds to Keras's own (CSVLogger, TerminateOnNaN, EarlyStopping,
LearningRateScheduler and TensorBoard are used as they are); the schedule
callbacks are in callbacks/schedules.py."""

import json
import os
import signal
import threading
import time

import keras
import numpy as np

from training import backup


class InterruptGuard(keras.callbacks.Callback):
    """Ctrl-C stops training even where Python loses the KeyboardInterrupt.

    Python raises KeyboardInterrupt wherever the main thread is when SIGINT
    arrives. Inside a garbage-collection callback or a __del__ (JAX registers
    such a callback; backend objects have finalizers) it is printed as
    "Exception ignored" and dropped, and training went on to its last epoch
    (seen on a loaded machine, in one of six tries). Entered around `fit`,
    the guard's handler also remembers the signal, and the next batch or epoch
    raises it from here. Only *_begin hooks: they run in the main thread, and a
    *_batch_end hook would turn off Keras's asynchronous callback dispatch."""

    def __init__(self):
        super().__init__()
        self.interrupted = False
        self._previous = None

    def __enter__(self):
        self.interrupted = False
        # Only over Python's own handler: not where SIGINT is ignored (a background
        # job) or handled by someone else, and only the main thread may set one.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _on_signal(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def _raise_if_interrupted(self, *args, **kwargs):
        if self.interrupted:
            self.interrupted = False
            raise KeyboardInterrupt

    on_epoch_begin = on_train_batch_begin = on_test_batch_begin = _raise_if_interrupted


class DeadlineReached(Exception):
    """Training stopped before an epoch that would end past the deadline."""


class Deadline(keras.callbacks.Callback):
    """Stops at an epoch boundary before the epoch that would end after `deadline`
    (a time.time() value), judged by the median epoch so far (`earlier_seconds`
    counts the epochs of earlier sessions). Raised from on_epoch_begin, as
    InterruptGuard does, so that fit ends without on_train_end and the backup
    stays for the rerun that resumes. Put it after EpochLog."""

    def __init__(self, deadline, earlier_seconds=()):
        super().__init__()
        self.deadline = deadline
        self.seconds = [s for s in earlier_seconds if s]

    def on_epoch_begin(self, epoch, logs=None):
        expected = float(np.median(self.seconds)) if self.seconds else 0.0
        if time.time() + expected > self.deadline:
            raise DeadlineReached(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get("seconds"):
            self.seconds.append(float(logs["seconds"]))


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


class EpochLog(keras.callbacks.Callback):
    """Adds `lr` (the rate in force at the epoch's start) and `seconds` (the
    epoch's wall time, validation included) to the logs, for history.csv.
    Put it after the schedule callbacks and before CSVLogger."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # One learning-rate column: LearningRateScheduler and ReduceLROnPlateau
            # log "learning_rate" too, but only for their own schedules.
            logs.pop("learning_rate", None)
            logs["lr"] = self._lr
            logs["seconds"] = time.perf_counter() - self._start


def _duration(seconds):
    """3h05m, 12m30s, 48s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class RunProgress(keras.callbacks.Callback):
    """After each epoch, one line with the run's position and an estimate of the
    time left for the whole run: the epochs left times the median epoch time
    (`seconds` from EpochLog; the epochs of earlier sessions count too).
    Put it after EpochLog."""

    def __init__(self, name, total_epochs, earlier_seconds=()):
        super().__init__()
        self.name, self.total_epochs = name, total_epochs
        self.seconds = [s for s in earlier_seconds if s]
        self._started = None

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs and logs.get("seconds"):
            self.seconds.append(float(logs["seconds"]))
        left = self.total_epochs - (epoch + 1)
        median = float(np.median(self.seconds)) if self.seconds else 0.0
        print(f"{self.name}: epoch {epoch + 1} of {self.total_epochs} done; "
              f"{_duration(time.perf_counter() - self._started)} elapsed this session, "
              f"about {_duration(left * median)} left ({left} epochs x {median:.0f} s median)",
              flush=True)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it over the
    target, so a kill or a full disk mid-save leaves the previous file intact."""

    def __init__(self, filepath, **kwargs):
        root, extension = os.path.splitext(filepath)
        self.final_path = filepath
        self.temporary_path = f"{root}.partial{extension}"
        super().__init__(self.temporary_path, **kwargs)

    def set_model(self, model):
        # The device path fits a wrapper (data/device_augment.py): save the network.
        super().set_model(getattr(model, "network", model))

    def on_epoch_end(self, epoch, logs=None):
        try:
            super().on_epoch_end(epoch, logs)
        except BaseException:
            # A failed save (a full disk) leaves the last good checkpoint as it was.
            if os.path.exists(self.temporary_path):
                os.remove(self.temporary_path)
            raise
        if os.path.exists(self.temporary_path):
            os.replace(self.temporary_path, self.final_path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore in generations (training/backup.py) that a kill cannot tear.

    Keras writes latest.weights.h5 in place, so a SIGKILL during the write leaves
    a file that fails to load. Here each epoch's state (weights, every layer's
    random-number state, the epoch) is written aside, read back, and renamed into
    place; the previous generation stays until the next one is in. `resume_from`
    is the generation the trainer chose (training.backup.resume_point), or None.
    """

    def __init__(self, backup_dir, resume_from=None):
        super().__init__(backup_dir)
        self.resume_from = resume_from

    def _seed_generators(self):
        """Every layer's random-number state (Dropout's masks...), which
        save_weights leaves out; restoring it makes a resumed run draw the masks
        an uninterrupted one would."""
        generators = {}
        for layer in self.model._flatten_layers(include_self=False):
            for index, generator in enumerate(getattr(layer, "_seed_generators", [])):
                generators[f"{layer.name}/{index}"] = generator
        return generators

    def on_train_begin(self, logs=None):
        if self.resume_from is None:
            return
        folder = self.resume_from
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(folder, backup.WEIGHTS))
        seeds = os.path.join(folder, backup.SEEDS)
        if os.path.exists(seeds):
            with np.load(seeds) as saved:
                for name, generator in self._seed_generators().items():
                    if name in saved:
                        generator.state.assign(saved[name])
        with open(os.path.join(folder, backup.METADATA)) as stream:
            self.model._initial_epoch = json.load(stream)["epoch"]

    def _save_model(self):
        backup.save(self.backup_dir, self._current_epoch,
                    lambda path: self.model.save_weights(filepath=path, overwrite=True),
                    {name: keras.ops.convert_to_numpy(generator.state)
                     for name, generator in self._seed_generators().items()})


class Memorisation(keras.callbacks.Callback):
    """Logs, per epoch, the accuracy on the training images whose label was
    flipped, against their true labels (`flipped_true_accuracy`) and against
    the noisy labels they were trained on (`flipped_noisy_accuracy`): the
    second rising as the first falls is the network memorising the noise.
    `batches` yields those images un-augmented, in the order of the labels."""

    def __init__(self, batches, true_labels, noisy_labels):
        super().__init__()
        self.batches = batches
        self.true_labels, self.noisy_labels = true_labels, noisy_labels

    def set_model(self, model):
        # Its batches are normalised on the host: the network itself scores them.
        super().set_model(getattr(model, "network", model))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.true_labels) == 0:
            return
        predicted = self.model.predict(self.batches, verbose=0).argmax(axis=-1)
        logs["flipped_true_accuracy"] = float((predicted == self.true_labels).mean())
        logs["flipped_noisy_accuracy"] = float((predicted == self.noisy_labels).mean())
