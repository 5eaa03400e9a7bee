"""Trains one recipe with `model.fit` and Keras callbacks, and writes its run record.

runs/<experiment>/<run-id>/
  config.json   resolved recipe, backend, versions, seed, git commit, data source
  status.json   running | completed | failed (with reason) | interrupted
  history.csv   one row per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds
  metrics.json  final and best accuracies, parameters, wall time, images/s
  best.keras    the best epoch by the recipe's monitor
  accuracy.png, loss.png, lr.png
  backup/       BackupAndRestore's state while the run is unfinished

Rerunning the same command resumes an unfinished run from its last finished
epoch; a finished run is reported and left alone.
"""

import dataclasses
import json
import os
import platform
import sys
import time

import keras
import numpy as np

from callbacks import AtomicBackupAndRestore, AtomicModelCheckpoint, EpochLog
from data.augment import Augmenter
from data.cifar import DataError, load_cifar, split_validation
from data.normalize import Normalizer
from data.pipeline import CifarBatches, EpochSync
from models import build_model, count_params
from plots.run_plots import write_run_plots
from training import record, schedules
from training.optimizers import build_optimizer
from training.recipe import RecipeError, validate

QUICK_TRAIN_IMAGES = 256
QUICK_VAL_IMAGES = 128
QUICK_EPOCHS = 2


@dataclasses.dataclass
class RunOptions:
    output_dir: str = "runs"
    run_id: str = None  # default: seed<seed>[-quick]
    seed: int = 0
    data_dir: str = None
    quick: bool = False
    verbose: int = 1  # Keras progress bar


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says how to go on."""


def quick_recipe(recipe):
    """--quick: the same recipe, 2 epochs on a few hundred images, to check an install."""
    return dataclasses.replace(
        recipe, epochs=min(recipe.epochs, QUICK_EPOCHS),
        val_split=min(recipe.val_split, QUICK_VAL_IMAGES),
    )


def run_directory(recipe, options):
    run_id = options.run_id or f"seed{options.seed}" + ("-quick" if options.quick else "")
    return os.path.join(options.output_dir, recipe.name, run_id)


def _versions():
    import matplotlib

    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "numpy": np.__version__, "matplotlib": matplotlib.__version__}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        versions[module] = __import__(module).__version__
    return versions


def _prepare_data(recipe, options):
    data = load_cifar(recipe.dataset, options.data_dir, recipe.label_mode)
    x_train, y_train = data.x_train, data.y_train
    if recipe.val_split:
        (x_train, y_train), (x_val, y_val) = split_validation(
            x_train, y_train, recipe.val_split, options.seed)
    else:
        x_val, y_val = data.x_test, data.y_test
    if recipe.train_images:
        x_train, y_train = x_train[:recipe.train_images], y_train[:recipe.train_images]
    x_test, y_test = data.x_test, data.y_test
    if options.quick:
        x_train, y_train = x_train[:QUICK_TRAIN_IMAGES], y_train[:QUICK_TRAIN_IMAGES]
        x_val, y_val = x_val[:QUICK_VAL_IMAGES], y_val[:QUICK_VAL_IMAGES]
        x_test, y_test = x_test[:QUICK_VAL_IMAGES], y_test[:QUICK_VAL_IMAGES]
    return data, (x_train, y_train), (x_val, y_val), (x_test, y_test)


def _evaluation_batches(recipe, normalizer, images, labels, num_classes):
    """Un-augmented batches, normalised as the recipe's stage says."""
    if normalizer.stage == "before":
        return CifarBatches(normalizer(images), labels, num_classes, recipe.eval_batch_size)
    return CifarBatches(images, labels, num_classes, recipe.eval_batch_size, normalize=normalizer)


def _batches(recipe, options, normalizer, train, val, num_classes):
    """Training and validation PyDatasets; 'before' normalisation is done once here."""
    x_train, y_train = train
    before = normalizer.stage == "before"
    train_batches = CifarBatches(
        normalizer(x_train) if before else x_train, y_train, num_classes, recipe.batch_size,
        augment=Augmenter(recipe.augment), normalize=None if before else normalizer,
        shuffle=True, seed=options.seed,
    )
    return train_batches, _evaluation_batches(recipe, normalizer, *val, num_classes)


def _check_existing(run_dir, config):
    """Refuses to mix a changed recipe into an existing run; says how to start fresh."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        saved = record.read_json(path)
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is unreadable ({error}); remove {run_dir} to start fresh.") from None
    keys = ("recipe", "seed", "quick", "backend")
    changed = [key for key in keys if saved.get(key) != config[key]]
    if changed:
        detail = []
        if "recipe" in changed:
            old, new = saved.get("recipe", {}), config["recipe"]
            detail = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
        raise RunError(
            f"{run_dir} holds a run with a different {', '.join(changed)}"
            + (f" ({'; '.join(detail)})" if detail else "")
            + ". Pass --run-id NAME to start a separate run, or delete that folder to start over."
        )
    return record.read_status(run_dir)


def _summary(history, recipe, params, train_images, val_is_test, test_scores):
    monitor = recipe.monitor
    best_value, best_epoch = record.best_epoch(history, monitor) or (None, None)
    best_row = next((row for row in history if row["epoch"] == best_epoch), {})
    last = history[-1] if history else {}
    seconds = sum(row.get("seconds", 0.0) for row in history)
    metrics = {
        "epochs_run": len(history),
        "recipe_epochs": recipe.epochs,
        "final_val_accuracy": last.get("val_accuracy"),
        "final_val_loss": last.get("val_loss"),
        "final_train_accuracy": last.get("accuracy"),
        "best_epoch": best_epoch,
        "best_monitor": monitor,
        "best_monitor_value": best_value,
        "best_val_accuracy": best_row.get("val_accuracy"),
        "max_val_accuracy": max((row["val_accuracy"] for row in history if "val_accuracy" in row), default=None),
        "trainable_params": params[0],
        "non_trainable_params": params[1],
        "train_seconds": seconds,
        "train_images_per_second": (train_images * len(history) / seconds) if seconds else None,
        "validation_is_test": val_is_test,
        "paper_accuracy": recipe.paper_accuracy,
        "paper_source": recipe.paper_source,
    }
    if val_is_test:  # the papers' convention: the test set is the validation set
        test_scores = {"final_test_accuracy": metrics["final_val_accuracy"],
                       "best_test_accuracy": metrics["best_val_accuracy"]}
    metrics.update(test_scores)
    return metrics


def train(recipe, options):
    """Runs (or resumes) `recipe`; returns the metrics dict of the finished run."""
    full_epochs = recipe.epochs
    if options.quick:
        recipe = quick_recipe(recipe)
    validate(recipe)
    run_dir = run_directory(recipe, options)
    config = {
        "experiment": recipe.name,
        "recipe": recipe.to_dict(),
        "seed": options.seed,
        "quick": options.quick,
        "backend": keras.backend.backend(),
        "versions": _versions(),
        "git_commit": record.git_commit(),
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "platform": platform.platform(),
    }
    status = _check_existing(run_dir, config)
    if status and status.get("status") == "completed":
        print(f"{recipe.name}: already completed in {run_dir}; nothing to do "
              f"(pass --run-id NAME for another run).")
        return record.read_json(os.path.join(run_dir, "metrics.json"))

    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as stream:
            stream.write("ok")
        os.remove(probe)
    except OSError as error:
        raise RunError(f"Cannot write the run record to {run_dir} ({error.strerror}); "
                       f"pass --output-dir with a writable folder.") from None

    data, train_split, val_split, test_split = _prepare_data(recipe, options)
    val_is_test = not recipe.val_split
    config.update(data_source=data.source, train_images=len(train_split[0]),
                  validation_images=len(val_split[0]),
                  validation="test set" if val_is_test else f"{recipe.val_split} held-out training images")
    record.write_json(os.path.join(run_dir, "config.json"), config)

    normalizer = Normalizer(**recipe.normalization).fit(train_split[0])
    train_batches, val_batches = _batches(recipe, options, normalizer, train_split, val_split,
                                          data.num_classes)

    keras.utils.set_random_seed(options.seed)
    model = build_model(recipe.model, data.num_classes, **recipe.model_args)
    params = count_params(model)
    optimizer_spec = dict(recipe.optimizer)
    base_lr = optimizer_spec.pop("learning_rate")
    model.compile(
        optimizer=build_optimizer(
            optimizer_spec.pop("name"),
            learning_rate=schedules.optimizer_learning_rate(recipe.schedule, base_lr),
            **optimizer_spec),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
    )

    backup_dir = os.path.join(run_dir, "backup")
    history_path = os.path.join(run_dir, "history.csv")
    done = 0
    metadata = os.path.join(backup_dir, "training_metadata.json")
    if os.path.exists(metadata):
        done = int(record.read_json(metadata).get("epoch", 0))
    history = record.truncate_history(history_path, done)
    if done:
        print(f"{recipe.name}: resuming {run_dir} after epoch {done} of {recipe.epochs}.")
    mode = "min" if "loss" in recipe.monitor else "max"
    best_so_far = record.best_epoch(history, recipe.monitor)  # best.keras must beat it
    threshold = best_so_far[0] if best_so_far else None

    callback_list = [EpochSync(train_batches)]
    callback_list += schedules.schedule_callbacks(recipe.schedule, base_lr, recipe.epochs)
    callback_list += [
        EpochLog(),
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(os.path.join(run_dir, "best.keras"), monitor=recipe.monitor,
                              mode=mode, save_best_only=True, initial_value_threshold=threshold),
    ]
    if recipe.early_stopping:
        callback_list.append(keras.callbacks.EarlyStopping(**recipe.early_stopping))
    callback_list += [
        keras.callbacks.CSVLogger(history_path, append=True),
        AtomicBackupAndRestore(backup_dir),
    ]

    record.write_status(run_dir, "running")
    start = time.time()
    try:
        model.fit(train_batches, validation_data=val_batches, epochs=recipe.epochs,
                  callbacks=callback_list, shuffle=False, verbose=options.verbose)
    except KeyboardInterrupt:
        record.write_status(run_dir, "interrupted", reason="stopped by Ctrl-C; rerun the same command to resume")
        raise
    except Exception as error:
        record.write_status(run_dir, "failed", reason=f"{type(error).__name__}: {error}")
        raise

    history = record.read_history(history_path)
    nan_epochs = [row["epoch"] for row in history if not np.isfinite(row.get("loss", 0.0))]
    if nan_epochs:
        reason = f"loss became NaN in epoch {nan_epochs[0]} (TerminateOnNaN stopped the run)"
        record.write_status(run_dir, "failed", reason=reason)
        raise RunError(f"{recipe.name}: {reason}. Lower the learning rate or check the data.")

    test_scores = {}
    if not val_is_test:
        test_batches = _evaluation_batches(recipe, normalizer, *test_split, data.num_classes)
        test_scores["final_test_accuracy"] = float(model.evaluate(test_batches, verbose=0)[1])
        best_path = os.path.join(run_dir, "best.keras")
        if os.path.exists(best_path):
            best_model = keras.models.load_model(best_path)
            best_model.compile(loss=model.loss, metrics=["accuracy"])
            test_scores["best_test_accuracy"] = float(best_model.evaluate(test_batches, verbose=0)[1])
    metrics = _summary(history, recipe, params, len(train_split[0]), val_is_test, test_scores)
    metrics["wall_seconds_this_session"] = time.time() - start
    metrics["quick"] = options.quick
    metrics["full_recipe_epochs"] = full_epochs
    record.write_json(os.path.join(run_dir, "metrics.json"), metrics)
    write_run_plots(history, run_dir, recipe.name + (" (quick)" if options.quick else ""),
                    recipe.monitor)
    record.write_status(run_dir, "completed")
    return metrics


__all__ = ["train", "RunOptions", "RunError", "DataError", "RecipeError"]
