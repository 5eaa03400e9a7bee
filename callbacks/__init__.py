"""Callbacks the suite adds to Keras's own (ModelCheckpoint, BackupAndRestore,
CSVLogger, TerminateOnNaN, EarlyStopping, LearningRateScheduler are used as is)."""

import os
import time

import keras


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


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it over the
    target, so a kill or a full disk mid-save leaves the previous file intact."""

    def __init__(self, filepath, **kwargs):
        root, extension = os.path.splitext(filepath)
        self.final_path = filepath
        self.temporary_path = f"{root}.partial{extension}"
        super().__init__(self.temporary_path, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.temporary_path):
            os.replace(self.temporary_path, self.final_path)
