"""The callbacks that the schedule kinds of training/schedules.py build beyond Keras's
LearningRateScheduler: one-cycle's rate and momentum (`OneCycleCallback`) and
torch's ReduceLROnPlateau (`TorchReduceLROnPlateau`)."""

import json
import os

import keras

from foundation import files
from training import record


class OneCycleCallback(keras.callbacks.Callback):
    """Sets the learning rate and (cycle_momentum) the momentum of one-cycle at
    each epoch start. Keras's LearningRateScheduler sets only the rate."""

    def __init__(self, spec, epochs):
        super().__init__()
        self.spec, self.epochs = spec, epochs  # a training.schedules.OneCycle

    def on_epoch_begin(self, epoch, logs=None):
        lr, momentum = self.spec.at(epoch, self.epochs)
        optimizer = self.model.optimizer
        if not optimizer.built:  # fit builds a LossScaleOptimizer only at its first step
            optimizer.build(self.model.trainable_variables)
        # Under fp16 compile wraps the optimizer in a LossScaleOptimizer; momentum lives inside.
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        optimizer.learning_rate = lr
        if isinstance(getattr(optimizer, "momentum", None), keras.Variable):
            optimizer.momentum.assign(momentum)
        elif hasattr(optimizer, "beta_1"):
            optimizer.beta_1 = momentum  # torch cycles Adam's beta1 the same way


class TorchReduceLROnPlateau(keras.callbacks.Callback):
    """torch.optim.lr_scheduler.ReduceLROnPlateau, stepped once per epoch on
    `monitor`. Where it differs from Keras's callback: the threshold is relative
    (an epoch improves on `best` only if it beats it by `threshold` times best;
    Keras's `min_delta` is absolute); the rate drops once the bad epochs *exceed*
    `patience` (Keras: reach it); cooldown is counted after the improvement
    check; and a reduction smaller than `eps` is skipped, so the rate stops at
    1e-8 where Keras would keep dividing. `spec` is a training.schedules.Plateau,
    which holds the fields and their defaults."""

    def __init__(self, spec, eps=1e-8, mode="auto", verbose=0, state_dir=None):
        super().__init__()
        spec.check_more(1)  # factor below 1
        monitor = spec.monitor
        self.monitor, self.factor, self.patience = monitor, float(spec.factor), int(spec.patience)
        self.threshold, self.cooldown = float(spec.threshold), int(spec.cooldown)
        self.min_lr = float(spec.min_lr)
        self.eps, self.verbose = float(eps), verbose
        self.maximize = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.best, self.wait, self.cooldown_counter = None, 0, 0
        # Its counters (best, bad epochs, cooldown) outlive a kill: saved per epoch
        # next to BackupAndRestore's files and restored for the epoch it resumes at.
        self.state_path = os.path.join(state_dir, record.PLATEAU_STATE) if state_dir else None

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0
        self._restored = False

    def on_epoch_begin(self, epoch, logs=None):
        """The counters saved after the epoch before this one, where training resumes."""
        if self._restored or not (self.state_path and os.path.exists(self.state_path)):
            return
        self._restored = True
        try:
            with open(self.state_path) as stream:
                state = json.load(stream).get(str(epoch))
        except (OSError, ValueError) as error:
            raise ValueError(f"{self.state_path} is damaged ({error}); the plateau counters "
                             f"of the resumed epoch are lost. Pass --run-id NAME to train the "
                             f"run again.") from None
        if state:
            self.best, self.wait, self.cooldown_counter = (
                state["best"], state["wait"], state["cooldown_counter"])

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise KeyError(f"ReduceLROnPlateau monitors {self.monitor!r}, which this run does "
                           f"not log; it logs {sorted(logs or {})}.")
        # torch's step(): the improvement check, then the cooldown, then the patience.
        if self._is_improvement(float(current), self.best):
            self.best, self.wait = float(current), 0
        else:
            self.wait += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.wait > self.patience:
            self._reduce(epoch)
            self.cooldown_counter, self.wait = self.cooldown, 0
        if not self.state_path:
            return
        states = {}
        if os.path.exists(self.state_path):
            with open(self.state_path) as stream:
                states = json.load(stream)
        # Keyed by epochs done; the last two cover a kill between this write and the backup's.
        best = None if self.best is None else float(self.best)
        states[str(epoch + 1)] = {"best": best, "wait": self.wait,
                                  "cooldown_counter": self.cooldown_counter}
        states = {key: states[key] for key in sorted(states, key=int)[-2:]}
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        files.write_json(self.state_path, states)

    def _is_improvement(self, current, best):
        if best is None:
            return True
        if self.maximize:
            return current > best * (1 + self.threshold)
        return current < best * (1 - self.threshold)

    def _reduce(self, epoch):
        optimizer = self.model.optimizer
        old = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        new = max(old * self.factor, self.min_lr)
        if old - new > self.eps:
            optimizer.learning_rate = new
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:.4g}.")
