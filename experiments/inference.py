"""What evaluate.py, predict.py and export.py share: a trained model for inference,
from a run folder or a .keras file, with its dataset and class names."""

import dataclasses
import os

from data.cifar import DATASETS

# The dataset a bare model file was trained on, by its number of outputs.
BY_OUTPUTS = {10: ("cifar10", "fine"), 100: ("cifar100", "fine"), 20: ("cifar100", "coarse")}


class InferenceError(ValueError):
    """A path that holds no usable model; the message says what to pass."""


@dataclasses.dataclass
class Trained:
    model: object  # keras.Model: raw 0-255 pixels in, logits out
    path: str  # the model.keras file
    dataset: str
    label_mode: str
    run_dir: str = None

    @property
    def class_names(self):
        return DATASETS[self.dataset].class_names[self.label_mode]


def check_path(path):
    """Raises InferenceError for a path that does not exist: called before the
    imports, so that a mistyped folder is named in a second, not after them."""
    if not os.path.exists(path):
        raise InferenceError(f"{path} does not exist; pass a run folder (runs/<experiment>/"
                             f"<run-id>) or its model.keras.")


def recorded_data_dir(trained):
    """The local CIFAR copy the run recorded it trained on, where it is still there."""
    from training import record

    config_path = os.path.join(trained.run_dir or "", record.CONFIG)
    if not os.path.exists(config_path):
        return None
    try:
        source = record.read_json(config_path).get("data_source")
    except (OSError, ValueError):
        return None
    if not source or source == "keras.datasets" or not os.path.exists(source):
        return None
    if os.path.isdir(source) and os.path.basename(os.path.normpath(source)) in (
            spec.folder for spec in DATASETS.values()):
        return os.path.dirname(os.path.normpath(source))  # the folder that holds the batches
    return source


def side_folder(folder, out=None):
    """Where a tool that only reads a run writes its side files: --out, else the
    model's folder where it is writable; None when neither is."""
    import tempfile

    target = out or folder
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):  # a real write: root passes os.access
            pass
    except OSError:
        return None
    return target


def _run_model(run_dir, data_dir):
    """<run>/model.keras; for a run recorded before runs wrote one, it is made from
    best.keras and the run's normalisation (fitted again on its training images)."""
    from training import record

    path = os.path.join(run_dir, record.MODEL)
    if os.path.exists(path):
        return path
    best = os.path.join(run_dir, record.BEST)
    config_path = os.path.join(run_dir, record.CONFIG)
    if not (os.path.exists(best) and os.path.exists(config_path)):
        raise InferenceError(f"{run_dir} holds no model.keras or best.keras: pass a run folder "
                             f"that experiments/run.py finished, or a .keras file.")
    import keras

    import cifar_repro  # noqa: F401  (best.keras holds the suite's layers)
    from models.export import save_inference_model
    from training.engine import RunOptions, prepare_data
    from training.recipe import Recipe

    config = record.read_json(config_path)
    recipe = Recipe.from_dict(config["recipe"])
    options = RunOptions(seed=config.get("seed", 0), data_dir=data_dir,
                         quick=bool(config.get("quick")))
    _, (x_train, _), _, _ = prepare_data(recipe, options)
    normalizer = recipe.normalization.build().fit(x_train)
    print(f"{run_dir}: writing model.keras from best.keras (recorded before runs wrote one)")
    try:
        return save_inference_model(keras.models.load_model(best, compile=False), normalizer, path)
    except OSError as error:
        raise InferenceError(f"{run_dir} was recorded before runs wrote model.keras, and it "
                             f"cannot be written there ({error.strerror or error}); copy the "
                             f"folder somewhere writable and pass the copy.") from None


def load(path, data_dir=None):
    """The Trained model at `path`: a run folder or a .keras file of raw-pixel input."""
    import keras

    from training import record

    if not os.path.exists(path):
        raise InferenceError(f"{path} does not exist; pass a run folder (runs/<experiment>/"
                             f"<run-id>) or its model.keras.")
    run_dir = path if os.path.isdir(path) else None
    model_path = _run_model(path, data_dir) if run_dir else path
    if not model_path.endswith(".keras"):
        raise InferenceError(f"{path} is not a .keras file or a run folder.")
    if os.path.basename(model_path) == record.BEST:
        raise InferenceError(f"{path} takes normalised images; pass its run folder or the "
                             f"model.keras beside it, which takes raw pixels.")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as error:  # Keras raises several types for a file it cannot read
        raise InferenceError(f"{model_path} does not load as a Keras model "
                             f"({type(error).__name__}: {str(error)[:200]}).") from None
    outputs = model.outputs[0].shape[-1]
    config_path = os.path.join(os.path.dirname(model_path), record.CONFIG)
    if os.path.exists(config_path):
        recipe = record.read_json(config_path)["recipe"]
        dataset, label_mode = recipe.get("dataset", "cifar10"), recipe.get("label_mode", "fine")
    elif outputs in BY_OUTPUTS:
        dataset, label_mode = BY_OUTPUTS[outputs]
    else:
        raise InferenceError(f"{model_path} has {outputs} outputs; a CIFAR model has 10, 20 or 100.")
    return Trained(model, model_path, dataset, label_mode,
                   run_dir or os.path.dirname(model_path))
