"""KerasTuner search spaces over the suite's recipes.

A search names a base experiment and a function that declares hyperparameters
on a `keras_tuner.HyperParameters` and returns the recipe edits they mean, as
the `--set key=value` strings run.py takes. A trial is then an ordinary run of
the edited recipe (same data, engine and run record), and the best trial's
edits are a command that trains it in full.

Every search selects on a validation split carved from the training set
(`SELECTION`): trials never score the test set, which only the retrained best
recipe touches, once, at its end.
"""

import dataclasses
import json

BUDGET = 5_000_000  # trainable parameters: the competition the papers entered
# Trials train on the first 10,000 of the 45,000 training images left after 5,000
# are held out (seeded by --seed) to score them.
SELECTION = ("val_split=5000", "train_images=10000")


@dataclasses.dataclass(frozen=True)
class Search:
    name: str
    base: str  # the experiment whose recipe the edits change
    define: object  # hp -> list of "key=value" edits
    budget: int = None  # maximum trainable parameters; None: no limit
    description: str = ""
    subset: tuple = SELECTION  # edits every trial gets: the selection split and subset
    tuner: str = "random"  # tune.py's default oracle for this search
    epochs: int = None  # tune.py's default epochs per trial (hyperband: the most); None: the base's
    retrained: str = None  # the experiment that trains the best trial's recipe in full, if any


def _set(key, value):
    return f"{key}={json.dumps(value)}"


def resnet_budget(hp):
    """Paper 001's 4-stage ResNet family: block type, blocks and width per stage, dropout."""
    types, blocks, widths = [], [], []
    for stage in range(4):
        types.append(hp.Choice(f"block_type_{stage + 1}", ["basic", "bottleneck"]))
        blocks.append(hp.Int(f"blocks_{stage + 1}", 1, 4))
        widths.append(hp.Choice(f"width_{stage + 1}", [32, 64, 96, 128, 192, 256]))
    dropout = hp.Float("dropout", 0.0, 0.3, step=0.1)
    return [_set("model_args.block_types", types), _set("model_args.blocks", blocks),
            _set("model_args.widths", widths), _set("model_args.dropout", round(dropout, 4))]


def kth_regularization(hp):
    """Paper 004's ResNet-B: dropout, L2 strength, initial learning rate, batch size."""
    return [_set("model_args.dropout", round(hp.Float("dropout", 0.0, 0.5, step=0.1), 4)),
            _set("model_args.l2", hp.Float("l2", 1e-5, 1e-2, sampling="log")),
            _set("optimizer.learning_rate", hp.Float("learning_rate", 1e-3, 0.3, sampling="log")),
            _set("batch_size", hp.Choice("batch_size", [32, 64, 128, 256]))]


def optimizer(hp):
    """SGD (log learning rate, momentum, Nesterov), Adam, Adagrad or RMSprop on ResNet-20,
    each with PyTorch's coupled weight decay 1e-4 as the base recipe has."""
    name = hp.Choice("optimizer", ["sgd", "adam", "adagrad", "rmsprop"])
    edits = [_set("optimizer.name", name)]
    with hp.conditional_scope("optimizer", ["sgd"]):
        if name == "sgd":
            edits += [_set("optimizer.learning_rate", hp.Float("sgd_learning_rate", 1e-3, 0.3, sampling="log")),
                      _set("optimizer.momentum", round(hp.Float("momentum", 0.0, 0.95, step=0.05), 4)),
                      _set("optimizer.nesterov", hp.Boolean("nesterov"))]
    with hp.conditional_scope("optimizer", ["adam", "adagrad", "rmsprop"]):
        if name != "sgd":
            edits += [_set("optimizer.learning_rate",
                           hp.Float("adaptive_learning_rate", 1e-4, 1e-2, sampling="log")),
                      _set("optimizer.momentum", 0.0)]
    return edits


def cnn_regularization(hp):
    """Paper 004's hand-tuned VGG CNN: the dropout after each block and before the head,
    L2 (the paper names it, its code has none), the shift and flip, learning rate, batch."""
    pool_dropout = [round(hp.Float(f"dropout_{block}", 0.0, 0.5, step=0.1), 4)
                    for block in (1, 2, 3)]
    augment = []
    shift = round(hp.Float("shift", 0.0, 0.2, step=0.05), 4)
    if shift:
        augment.append({"op": "shift", "fraction": shift})
    if hp.Boolean("hflip", default=True):
        augment.append({"op": "hflip", "p": 0.5})
    return [_set("model_args.pool_dropout", pool_dropout),
            _set("model_args.dense_dropout", round(hp.Float("dense_dropout", 0.0, 0.6, step=0.1), 4)),
            _set("model_args.l2", hp.Float("l2", 1e-6, 1e-2, sampling="log")),
            _set("augment", augment),
            _set("optimizer.learning_rate", hp.Float("learning_rate", 3e-4, 0.1, sampling="log")),
            _set("batch_size", hp.Choice("batch_size", [32, 64, 128, 256]))]


def mobilenetv2_expansion(hp):
    """Paper 000's MobileNetV2: the expansion factor and the second row's stride."""
    stride = hp.Choice("row2_stride", [1, 2])
    return [_set("model_args.expansion", hp.Int("expansion", 1, 8)),
            _set("model_args.row_strides", [1, stride, 2, 2, 1, 2, 1])]


SEARCHES = {search.name: search for search in (
    Search("resnet_budget", "resnet5m_row6", resnet_budget, BUDGET,
           "paper 001's ResNet family under 5M trainable parameters"),
    Search("kth_regularization", "resnet_step", kth_regularization, None,
           "paper 004's ResNet-B regularisation and learning rate"),
    Search("optimizer", "resnet20", optimizer, None, "optimizers on a fixed ResNet-20"),
    Search("mobilenetv2_expansion", "mobilenetv2", mobilenetv2_expansion, BUDGET,
           "paper 000's expansion factor and second-row stride"),
    # Hyperband: most of ten configurations cost one or three epochs, and the few
    # that lead get nine; a Bayesian search would pay nine epochs for every one.
    Search("cnn_regularization", "cnn_regularized", cnn_regularization, None,
           "paper 004's hand-tuned VGG CNN: dropout, L2, augmentation, learning rate, batch",
           tuner="hyperband", epochs=9, retrained="cnn_searched"),
)}
