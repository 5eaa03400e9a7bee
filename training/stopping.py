"""A recipe's `early_stopping` section: Keras's EarlyStopping, its arguments checked.

An unset field takes Keras's default (monitor val_loss, patience 0, min_delta 0,
mode auto); the section's dict form holds only the fields a recipe sets.
"""

import dataclasses
from typing import ClassVar

from foundation.spec import Section
from training.record import MONITORS

MODES = ("auto", "min", "max")


@dataclasses.dataclass(frozen=True)
class EarlyStopping(Section):
    field: ClassVar[str] = "early_stopping"
    monitor: str = None  # a column of history.csv (MONITORS)
    patience: int = None  # epochs without improvement before the run stops
    min_delta: float = None  # the smallest change that counts as improvement
    mode: str = None  # auto | min | max

    def check(self):
        """Raises ValueError naming the first field Keras could not take."""
        def need(condition, message):
            if not condition:
                raise ValueError(f"early_stopping.{message}")
        monitor = "val_loss" if self.monitor is None else self.monitor
        patience = 0 if self.patience is None else self.patience
        min_delta = 0 if self.min_delta is None else self.min_delta
        mode = "auto" if self.mode is None else self.mode
        need(monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}; got {monitor!r}.")
        need(isinstance(patience, int) and not isinstance(patience, bool) and patience >= 0,
             f"patience must be a whole number of epochs >= 0; got {patience!r}.")
        need(isinstance(min_delta, (int, float)) and not isinstance(min_delta, bool)
             and min_delta >= 0, f"min_delta must be a number >= 0; got {min_delta!r}.")
        need(mode in MODES, f"mode must be auto, min or max; got {mode!r}.")
        return self

    def callback(self):
        import keras  # here, so that a recipe loads without Keras

        return keras.callbacks.EarlyStopping(**self.to_dict())
