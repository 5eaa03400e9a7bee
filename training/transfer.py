"""Starting a run from another run's network: a new head, then fine-tuning.

The recipe's `transfer` section names the source experiment and its run. The
source's `best.keras` keeps every layer up to its classifier; a new Dense layer
with the target's classes replaces the classifier. The run then trains in two
stages: the head alone for `head_epochs` (the rest frozen, its BatchNorm in
inference mode, as Keras's fine-tuning guide does), then the whole network with
the recipe's optimizer and schedule for the remaining epochs.
"""

import dataclasses
import os
from typing import ClassVar

from foundation.spec import Section
from training import record


class TransferError(RuntimeError):
    """A transfer source that is missing or does not fit; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Transfer(Section):
    """A recipe's `transfer` section."""
    field: ClassVar[str] = "transfer"
    source: str = None  # the experiment whose best.keras starts this run
    run: str | None = None  # its run id, run folder or .keras file; None: this run's seed
    head_epochs: int = 0  # epochs that train the new head alone
    head_learning_rate: float | None = None  # the head stage's rate; None: the optimizer's

    def to_dict(self):
        """Every field but an unset head_learning_rate (run shows, even unset)."""
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if v is not None or k == "run"}

    def check(self, epochs):
        """Raises ValueError naming the first field that cannot run for `epochs`."""
        if not isinstance(self.source, str):
            raise ValueError(f"transfer needs a source experiment name; got {self.to_dict()!r}.")
        head_epochs, head_lr = self.head_epochs, self.head_learning_rate
        if not (isinstance(head_epochs, int) and 0 <= head_epochs < epochs):
            raise ValueError(f"transfer.head_epochs must be a whole number in [0, epochs); "
                             f"got {head_epochs!r}.")
        if head_lr is not None and not (isinstance(head_lr, (int, float)) and head_lr > 0):
            raise ValueError(f"transfer.head_learning_rate must be a number > 0; got {head_lr!r}.")
        return self

    def head_rate(self, learning_rate):
        """The head stage's learning rate, given the recipe optimizer's."""
        return learning_rate if self.head_learning_rate is None else self.head_learning_rate

    def source_checkpoint(self, output_dir, seed, quick):
        """The path of the source's best.keras, or TransferError saying how to make one."""
        source, run = self.source, self.run
        if run and (os.sep in run or run.endswith(".keras") or os.path.exists(run)):
            path = os.path.join(run, record.BEST) if os.path.isdir(run) else run
        else:
            run_id = run or f"seed{seed}" + ("-quick" if quick else "")
            path = os.path.join(output_dir, source, run_id, record.BEST)
        if not os.path.isfile(path):
            command = f"python experiments/run.py {source}" + (f" --seed {seed}" if seed else "")
            command += " --quick" if quick else ""
            raise TransferError(
                f"No {source} checkpoint at {path}. Train the source first ({command}), "
                f"or point the transfer at one with --set transfer.run=PATH (a run folder or "
                f"a .keras file)."
            )
        return path


def transfer_model(path, num_classes, input_shape=(32, 32, 3)):
    """The source network with a new `num_classes`-way Dense head (logits)."""
    import keras  # here, so that a recipe loads without Keras

    from models.layers import LOGITS_DTYPE
    from models.native_graph import Network

    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises several types for a bad file
        raise TransferError(f"Cannot load {path} as a Keras model ({type(error).__name__}: "
                            f"{error}). Point transfer.run at a best.keras file.") from None
    if tuple(source.input_shape[1:]) != tuple(input_shape):
        raise TransferError(f"{path} takes inputs of shape {source.input_shape[1:]}, "
                            f"not {input_shape}: it cannot start a CIFAR run.")
    classifier = source.layers[-1]
    if not isinstance(classifier, keras.layers.Dense):
        raise TransferError(f"{path} does not end in a Dense classifier "
                            f"(its last layer is {type(classifier).__name__}).")
    features = classifier.input
    head = keras.layers.Dense(num_classes, name="transfer_head", dtype=LOGITS_DTYPE)(features)
    return Network(source.input, head, name=f"{source.name}_transfer")


def set_backbone_trainable(model, trainable):
    """Freezes or unfreezes every layer but the new head."""
    for layer in model.layers:
        layer.trainable = trainable or layer.name == "transfer_head"
