"""Starting a run from another run's network: a new head, then fine-tuning.

`recipe.transfer` = {"source": experiment, "run": run id | run folder | .keras file,
"head_epochs": N, "head_learning_rate": lr}. The source's `best.keras` keeps
every layer up to its classifier; a new Dense layer with the target's classes
replaces the classifier. The run then trains in two stages: the head alone for
`head_epochs` (the rest frozen, its BatchNorm in inference mode, as Keras's
fine-tuning guide does), then the whole network with the recipe's optimizer
and schedule for the remaining epochs.
"""

import os

import keras

from models.native_graph import Network
from training import record
from models.layers import LOGITS_DTYPE


class TransferError(RuntimeError):
    """A transfer source that is missing or does not fit; the message says what to do."""


def source_checkpoint(transfer, output_dir, seed, quick):
    """The path of the source's best.keras, or TransferError saying how to make one."""
    source = transfer["source"]
    run = transfer.get("run")
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
            f"or point the transfer at one with --set transfer.run=PATH (a run folder or a .keras file)."
        )
    return path


def transfer_model(path, num_classes, input_shape=(32, 32, 3)):
    """The source network with a new `num_classes`-way Dense head (logits)."""
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
