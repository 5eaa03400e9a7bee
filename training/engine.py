"""Trains one recipe with `model.fit` and Keras callbacks, and writes its run record
(the folder's layout and writers: training/record.py).

Rerunning the same command resumes an unfinished run from its last finished
epoch; a finished run is reported and left alone.
"""

import contextlib
import dataclasses
import errno
import json
import os
import platform
import re
import shutil
import sys
import time

import keras
import numpy as np

from callbacks import (AtomicBackupAndRestore, AtomicModelCheckpoint, Deadline, DeadlineReached,
                       EpochLog, EpochSync, InterruptGuard, Memorisation, RunProgress)
from data import device_augment
from data.augment import Augmenter
from data.cifar import DataError, load_cifar, split_validation
from data.normalize import Normalizer
from data.pipeline import MAX_AUTO_INPUT_THREADS as MAX_INPUT_THREADS
from data.pipeline import CifarBatches, input_threads
from models import build_model, count_params, native, native_graph
from models.export import save_inference_model
from training import allocator, backup, record, transfer
from training.machine import (cpu_flags, device_description, precision_warning, quiet_startup,
                              tensor_float_32, versions)
from training.distribute import DistributeError, non_chief_worker, placement as make_placement
from training.losses import loss_and_metrics
from foundation import spec
from training.optimizer_specs import Optimizer
from training.schedules import Constant, Schedule
from training.recipe import RecipeError, normalised_recipe, training_fields, validate

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
    deterministic: bool = False  # seeded ops with op determinism (TensorFlow; see README)
    distribute: str = "none"  # none | mirrored | multi-worker | data-parallel (training/distribute.py)
    precision: str = "fp32"  # fp32 | bf16 | fp16: Keras mixed precision (variables stay float32)
    input_threads: int = 0  # threads building training batches; 0: half the cores, 1-8
    verbose: int = 1  # Keras progress bar
    tensorboard: bool = False  # keras.callbacks.TensorBoard logs in <run>/tensorboard
    # Recipe fields the user set (--epochs, --val-split) that --quick keeps as given.
    quick_keeps: tuple = ()
    # Score the test set at the end when it did not validate; a search's trials,
    # selected on held-out training images, never read it.
    score_test: bool = True
    # A time.time() after which no epoch starts that would not end before it (the
    # median epoch judges); the run then stops resumable (RunStopped). None: none.
    deadline: float = None
    steps_per_execution: int = 1  # training steps in one compiled call (host overhead)
    # Where crop, flip, shift, Cutout, normalisation and mixup run: "host" (NumPy, the
    # reference), "device" (in the compiled step, data/device_augment.py) or "auto"
    # (the device on a GPU where the recipe allows it). A run keeps the path it began on.
    augment_on: str = "auto"

    def __post_init__(self):
        # The run id names one folder under output_dir/<experiment>/: "../x" would put the
        # record outside it, and "a/b" where the report does not look for runs.
        if self.run_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
                                                        str(self.run_id)):
            raise RunError(f"--run-id must be a folder name of letters, digits, '.', '_' and "
                           f"'-' (not starting with '.'); got {self.run_id!r}.")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**32):
            raise RunError(f"--seed must be a whole number in [0, 2**32); got {self.seed!r}.")
        if not (isinstance(self.steps_per_execution, int) and self.steps_per_execution >= 1):
            raise RunError(f"--steps-per-execution must be a whole number >= 1; got "
                           f"{self.steps_per_execution!r}.")
        if self.augment_on not in device_augment.PATHS:
            raise RunError(f"--augment-on must be one of {', '.join(device_augment.PATHS)}; "
                           f"got {self.augment_on!r}.")
        if not (isinstance(self.input_threads, int) and 0 <= self.input_threads <= MAX_INPUT_THREADS):
            raise RunError(f"--input-threads must be 0 (half the cores) or 1 to "
                           f"{MAX_INPUT_THREADS}; got {self.input_threads!r}.")


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says how to go on."""


class RunStopped(RunError):
    """A run stopped at its deadline, at an epoch boundary; the same command resumes it."""


# --precision -> Keras dtype policy. Mixed policies compute in 16 bits and keep the
# variables (and the loss, BatchNorm's statistics and the optimizer) in float32;
# under float16 `compile` wraps the optimizer in a LossScaleOptimizer.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


@contextlib.contextmanager
def precision_policy(precision):
    """Builds the layers created inside under `precision`'s policy, then restores
    the previous global policy (a saved model keeps each layer's policy)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def quick_recipe(recipe, keeps=()):
    """--quick: the same recipe, 2 epochs on a few hundred images, to check an install.
    `keeps` names the fields the user set explicitly (epochs, val_split): those win."""
    epochs = recipe.epochs if "epochs" in keeps else min(recipe.epochs, QUICK_EPOCHS)
    transfer_spec = recipe.transfer
    if transfer_spec:  # one epoch for the head, one for the whole network
        transfer_spec = transfer_spec.replace(head_epochs=min(transfer_spec.head_epochs, epochs - 1))
    val_split = (recipe.val_split if "val_split" in keeps
                 else min(recipe.val_split, QUICK_VAL_IMAGES))
    return dataclasses.replace(recipe, epochs=epochs, val_split=val_split, transfer=transfer_spec)


def run_directory(recipe, options):
    run_id = options.run_id or f"seed{options.seed}" + ("-quick" if options.quick else "")
    output_dir = options.output_dir
    worker = non_chief_worker(options.distribute)
    if worker is not None:  # a multi-worker run's record is the chief's; workers keep their own
        output_dir = os.path.join(output_dir, ".workers", f"worker{worker}")
    return os.path.join(output_dir, recipe.name, run_id)


def _enable_determinism():
    """Makes TensorFlow's ops deterministic (it also turns XLA off). JAX and
    PyTorch on the CPU are deterministic for these networks once seeded."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif keras.backend.backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def prepare_data(recipe, options):
    """(data, train, validation, test) as the run sees them: the split, the subset
    and --quick applied."""
    data = load_cifar(recipe.dataset, options.data_dir, recipe.label_mode)
    x_train, y_train = data.x_train, data.y_train
    if recipe.val_split:
        (x_train, y_train), (x_val, y_val) = split_validation(
            x_train, y_train, recipe.val_split, options.seed, recipe.val_selection)
    else:
        x_val, y_val = data.x_test, data.y_test
    if recipe.train_images:
        x_train, y_train = x_train[:recipe.train_images], y_train[:recipe.train_images]
    if recipe.val_images:
        x_val, y_val = x_val[:recipe.val_images], y_val[:recipe.val_images]
    x_test, y_test = data.x_test, data.y_test
    if options.quick:
        x_train, y_train = x_train[:QUICK_TRAIN_IMAGES], y_train[:QUICK_TRAIN_IMAGES]
        x_val, y_val = x_val[:QUICK_VAL_IMAGES], y_val[:QUICK_VAL_IMAGES]
        x_test, y_test = x_test[:QUICK_VAL_IMAGES], y_test[:QUICK_VAL_IMAGES]
    return data, (x_train, y_train), (x_val, y_val), (x_test, y_test)


def _evaluation_batches(recipe, normalizer, images, labels, num_classes):
    """Un-augmented batches, normalised as the recipe's stage says."""
    column = bool(recipe.mixup)  # mixup runs score each image against its own label
    if normalizer.stage == "before":
        return CifarBatches(normalizer(images), labels, num_classes, recipe.eval_batch_size,
                            label_column=column)
    return CifarBatches(images, labels, num_classes, recipe.eval_batch_size, normalize=normalizer,
                        label_column=column)


def training_batches(recipe, options, normalizer, train, val, num_classes, path="host"):
    """Training and validation PyDatasets; 'before' normalisation is done once here
    (on the host path; the device path sends uint8 images and normalises there)."""
    if path == "device":
        return device_augment.device_batches(recipe, options.seed,
                                             input_threads(options.input_threads), normalizer,
                                             train, val, num_classes)
    x_train, y_train = train
    before = normalizer.stage == "before"
    train_batches = CifarBatches(
        normalizer(x_train) if before else x_train, y_train, num_classes, recipe.batch_size,
        augment=Augmenter(recipe.augment), normalize=None if before else normalizer,
        mix=recipe.mixup, shuffle=True, seed=options.seed,
        threads=input_threads(options.input_threads), label_column=bool(recipe.mixup),
    )
    return train_batches, _evaluation_batches(recipe, normalizer, *val, num_classes)


def _apply_noise(spec, seed, run_dir, train, num_classes):
    """Corrupts the training labels as the recipe's noise spec says; saves what changed."""
    x_train, y_train = train
    noisy, flipped, seed = spec.corrupt(y_train, num_classes, seed)
    record.write_npz(os.path.join(run_dir, record.NOISE), true_labels=y_train,
                     noisy_labels=noisy, flipped_indices=np.flatnonzero(flipped))
    summary = {"noise_kind": spec.kind, "noise_rate": spec.rate, "noise_seed": seed,
               "noise_flipped": int(flipped.sum()),
               "noise_actual_rate": float(flipped.mean()) if len(flipped) else 0.0}
    return (x_train, noisy), flipped, summary


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stretch of epochs trained with one optimizer: a run has one ("train"); a
    transfer run has "head" (its new head alone) and then "finetune"."""
    name: str
    first_epoch: int
    end_epoch: int
    optimizer: Optimizer
    schedule: Schedule
    backup: str  # BackupAndRestore's folder, in the run folder


def _stages(recipe):
    if not recipe.transfer:
        return [Stage("train", 0, recipe.epochs, recipe.optimizer, recipe.schedule, record.BACKUP)]
    head_epochs = recipe.transfer.head_epochs
    head_optimizer = recipe.optimizer.replace(
        learning_rate=recipe.transfer.head_rate(recipe.optimizer.learning_rate))
    stages = [Stage("head", 0, head_epochs, head_optimizer, Constant(), record.BACKUP_HEAD),
              Stage("finetune", head_epochs, recipe.epochs, recipe.optimizer, recipe.schedule,
                    record.BACKUP)]
    return [stage for stage in stages if stage.end_epoch > stage.first_epoch]


def compile_model(model, recipe, optimizer, schedule, jit_compile="auto", steps_per_execution=1):
    """Compiles `model` with the optimizer (a spec or its dict form) at the rate the
    schedule gives it; returns the base learning rate. With steps_per_execution > 1
    one compiled call runs that many steps: a per-iteration rate is the optimizer's
    own (counted from its step), so it is unchanged; per-epoch callbacks still run."""
    optimizer, schedule = spec.parse("optimizer", optimizer), spec.parse("schedule", schedule)
    loss, metrics = loss_and_metrics(recipe)
    model.compile(
        optimizer=optimizer.build(schedule.optimizer_rate(optimizer.learning_rate)),
        loss=loss, metrics=metrics, jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return optimizer.learning_rate


def _missing_folders(run_dir):
    """run_dir and those of its parents that do not exist yet, innermost first."""
    created, path = [], os.path.abspath(run_dir)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)
    return created


@contextlib.contextmanager
def _removed_if_refused(created):
    """The folders a new run creates (`created`, from _missing_folders before it
    made them) are removed again if it stops before its config.json is written (no
    data, a network that does not build), so a refused start leaves no empty
    runs/<experiment>/<run-id> for report.py to list as a skipped record. A folder
    that was there before stays."""
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)  # only this run has written there
            for folder in created[1:]:  # the experiment's and output folders, if now empty
                try:
                    os.rmdir(folder)
                except OSError:
                    break
        raise


def _finished_record(recipe, run_dir, status):
    """metrics.json of a finished run, else None (the run trains or resumes). A status
    lost to damage is rewritten from the files; a finished record damaged since is
    refused with the way out."""
    state = (status or {}).get("status")
    if state not in ("completed", "damaged"):
        return None
    stages_left = any(backup.generations(os.path.join(run_dir, name))
                      for name in (record.BACKUP, record.BACKUP_HEAD))
    try:
        metrics = record.read_json(os.path.join(run_dir, record.METRICS))
        logged = record.logged_epochs(os.path.join(run_dir, record.HISTORY))
    except (OSError, ValueError) as error:
        metrics, logged = None, f"unreadable ({type(error).__name__})"
    if state == "damaged":
        print(f"{recipe.name}: {status['reason']}", file=sys.stderr)
        if stages_left or metrics is None or logged != metrics.get("epochs_run"):
            return None  # unfinished: resume from its backup
        record.write_status(run_dir, "completed")
        return metrics
    if metrics is not None and logged == metrics.get("epochs_run"):
        return metrics
    wanted = metrics.get("epochs_run") if metrics else "its"
    raise RunError(f"{run_dir} finished, but its record was damaged since: history.csv holds "
                   f"{logged} of {wanted} epochs' rows, and the finished run kept no backup to "
                   f"train them again. Pass --run-id NAME to train the run again, or delete "
                   f"{run_dir}.")


def _check_existing(run_dir, config):
    """Refuses to mix a changed recipe into an existing run; says how to start fresh.
    Returns (the run's status, its recorded config), each None for a new run."""
    path = os.path.join(run_dir, record.CONFIG)
    if not os.path.exists(path):
        return None, None
    try:
        saved = record.read_json(path)
    except (OSError, ValueError) as error:
        # Rewritten from this command once the network builds: the rerun of the
        # same command is how a run resumes, and the backup and history are intact.
        print(f"{path} was unreadable ({type(error).__name__}); it is written again from "
              f"this command.", file=sys.stderr)
        return record.read_status(run_dir), None
    saved.setdefault("precision", "fp32")  # records from before --precision existed
    saved.setdefault("augment_on", "host")  # and from before the device path existed
    # A field added since the record was written reads as its default there, and a
    # section as its typed spec reads it (defaults filled in).
    # Fields that describe the run (its notes, the paper's number) may change under it.
    saved["recipe"] = training_fields(normalised_recipe(saved.get("recipe", {})))
    current = {**config, "recipe": training_fields(config["recipe"])}
    keys = ("recipe", "seed", "quick", "backend", "deterministic", "precision")
    changed = [key for key in keys if saved.get(key) != current[key]]
    if changed:
        detail = []
        if "recipe" in changed:
            old, new = saved.get("recipe", {}), current["recipe"]
            detail = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
        raise RunError(
            f"{run_dir} holds a run with a different {', '.join(changed)}"
            + (f" ({'; '.join(detail)})" if detail else "")
            + ". Pass --run-id NAME to start a separate run, or delete that folder to start over."
        )
    return record.read_status(run_dir), saved


def _summary(history, recipe, params, train_images, val_is_test, test_scores):
    """metrics.json; where the whole test set validated, its scores are the validation's."""
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
    if val_is_test and not test_scores:  # the papers' convention: the test set validates
        test_scores = {"final_test_accuracy": metrics["final_val_accuracy"],
                       "best_test_accuracy": metrics["best_val_accuracy"]}
    metrics.update(test_scores)
    return metrics


def train(recipe, options):
    """Runs (or resumes) `recipe`; returns the metrics dict of the finished run."""
    full_epochs = recipe.epochs
    if options.quick:
        recipe = quick_recipe(recipe, options.quick_keeps)
    validate(recipe)
    if options.precision not in PRECISIONS:
        raise RunError(f"Unknown precision {options.precision!r}; expected one of "
                       f"{', '.join(PRECISIONS)}.")
    # First: TensorFlow's strategies must exist before its devices are initialised.
    try:
        placement = make_placement(options.distribute)
        placement.check_batch(recipe.batch_size)
    except DistributeError as error:
        raise RunError(str(error)) from None
    run_dir = run_directory(recipe, options)
    config = {
        "experiment": recipe.name,
        "recipe": recipe.to_dict(),
        "seed": options.seed,
        "quick": options.quick,
        "deterministic": options.deterministic,
        "precision": options.precision,
        "backend": keras.backend.backend(),
        # glibc keeps freed memory for reuse on the PyTorch backend (training/allocator.py).
        "malloc_keeps_freed_memory": allocator.tune_for_backend(keras.backend.backend()),
        "versions": versions(),
        "git_commit": record.git_commit(),
        "command": " ".join(sys.argv),
        "host": platform.node(),
        "device": device_description(),
        "tensor_float_32": tensor_float_32(),  # TF32 matrix units, on a GPU that has them
        "steps_per_execution": options.steps_per_execution,
        # The batches do not depend on it (each is a function of seed, epoch and index).
        "input_threads": input_threads(options.input_threads),
        **placement.describe(),
        "platform": platform.platform(),
    }
    # One writer per run folder: a second process on the same run id stops here.
    created = _missing_folders(run_dir)
    lock = record.FolderLock(run_dir, "run")
    try:
        lock.acquire()
    except record.FolderBusy as error:
        raise RunError(str(error)) from None
    except OSError as error:
        raise RunError(f"Cannot write the run record to {run_dir} ({error.strerror}); "
                       f"pass --output-dir with a writable folder.") from None
    try:
        return _train_locked(recipe, options, full_epochs, placement, run_dir, config, created)
    finally:
        lock.release()


@dataclasses.dataclass
class Prepared:
    """What a run trains: its data split, batches, network and stages."""
    data: object  # data.cifar.CifarData
    train: tuple  # (images, labels) as trained (labels noisy under label noise)
    val: tuple
    test: tuple
    normalizer: Normalizer
    train_batches: CifarBatches
    val_batches: CifarBatches
    model: keras.Model
    trainer: keras.Model  # what fits: the model, or its device-path wrapper
    stages: list  # of Stage, the ones left to train
    extra_callbacks: list  # Memorisation under label noise
    noise_summary: dict
    params: tuple  # (trainable, non-trainable), the whole network trainable
    val_from_test: bool = True  # the test set (or its first val_images) validates


def _train_locked(recipe, options, full_epochs, placement, run_dir, config, created):
    """train() once this process holds the run folder's lock: prepare, each stage, finish."""
    status, saved = _check_existing(run_dir, config)
    finished = _finished_record(recipe, run_dir, status)
    if finished is not None:
        print(f"{recipe.name}: already completed in {run_dir}; nothing to do "
              f"(pass --run-id NAME for another run).")
        return finished
    warning = precision_warning(options.precision, config["device"], cpu_flags())
    if warning:  # only where something will train
        print(warning, file=sys.stderr)
    with _removed_if_refused(created):
        prepared = _prepare(recipe, options, placement, run_dir, config, saved)
        # Written once the network builds, so that a run refused before leaves no
        # record that a corrected rerun would have to match.
        record.write_json(os.path.join(run_dir, record.CONFIG), config)
    record.write_status(run_dir, "running")
    start = time.time()
    for stage in prepared.stages:
        _fit_stage(recipe, options, placement, run_dir, prepared, stage)
    prepared.train_batches.close()  # its threads; a group's next experiment builds its own
    return _finish(recipe, options, run_dir, prepared, full_epochs, start)


def _prepare(recipe, options, placement, run_dir, config, saved=None):
    """Data, normalisation, batches and the network (built, or loaded for a transfer
    run); completes `config` with what the data turned out to be. `saved`: the run's
    recorded config where it resumes."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        with open(probe, "w") as stream:
            stream.write("ok")
        os.remove(probe)
    except OSError as error:
        raise RunError(f"Cannot write the run record to {run_dir} ({error.strerror}); "
                       f"pass --output-dir with a writable folder.") from None
    data, train_split, val_split, test_split = prepare_data(recipe, options)
    from_test = not recipe.val_split
    # A subset of the test set validating each epoch (val_images) leaves the whole
    # test set to score the final and best models at the end.
    whole_test = len(val_split[0]) == len(test_split[0])
    config.update(data_source=data.source, data_origin=data.origin,
                  train_images=len(train_split[0]), validation_images=len(val_split[0]),
                  validation=(f"{recipe.val_split} held-out training images" if not from_test
                              else "test set" if whole_test
                              else f"the first {len(val_split[0])} test images"))
    noise_summary, extra_callbacks = {}, []
    if recipe.noise:
        true_labels = train_split[1]
        train_split, flipped, noise_summary = _apply_noise(
            recipe.noise, options.seed, run_dir, train_split, data.num_classes)
        config.update(noise_summary)
    source_path = None
    if recipe.transfer:
        source_path = recipe.transfer.source_checkpoint(options.output_dir, options.seed,
                                                        options.quick)
        config["transfer_source"] = os.path.abspath(source_path)
    normalizer = recipe.normalization.build().fit(train_split[0])
    path = _augment_path(recipe, options, run_dir, saved, config)
    train_batches, val_batches = training_batches(recipe, options, normalizer, train_split,
                                                  val_split, data.num_classes, path)
    if recipe.noise:
        extra_callbacks.append(Memorisation(
            _evaluation_batches(recipe, normalizer, train_split[0][flipped], true_labels[flipped],
                                data.num_classes),
            true_labels[flipped], train_split[1][flipped]))
    with quiet_startup():  # it seeds TensorFlow too where installed, importing it on any backend
        keras.utils.set_random_seed(options.seed)
    if options.deterministic:
        _enable_determinism()
    native.NATIVE_TORCH = recipe.fast_path
    config["fast_path_active"] = native_graph.active()  # the PyTorch backend, Keras as tested
    stages = _stages(recipe)
    head_path = os.path.join(run_dir, record.HEAD)
    # Variables are created (mirrored or sharded) by the strategy, under the precision's policy.
    with placement.scope(), precision_policy(options.precision):
        if recipe.transfer and os.path.exists(head_path):
            model = keras.models.load_model(head_path, compile=False)
            stages = [stage for stage in stages if stage.name != "head"]
        elif recipe.transfer:
            model = transfer.transfer_model(source_path, data.num_classes)
        else:
            try:
                model = build_model(recipe.model, data.num_classes, **recipe.model_args)
            except (ValueError, TypeError) as error:
                raise RunError(f"model_args {json.dumps(recipe.model_args)} do not build "
                               f"{recipe.model}: {error}") from None
    transfer.set_backbone_trainable(model, True)
    trainer = model
    if path == "device":
        with placement.scope(), precision_policy(options.precision):
            trainer = device_augment.training_model(model, train_batches, normalizer)
    return Prepared(data, train_split, val_split, test_split, normalizer, train_batches,
                    val_batches, model, trainer, stages, extra_callbacks, noise_summary,
                    count_params(model), val_from_test=from_test)


def _augment_path(recipe, options, run_dir, saved, config):
    """The run's augmentation path (recorded in config): the one it began on when it
    resumes (`saved`, its recorded config), else as --augment-on says."""
    has_gpu = not config["device"].startswith("CPU")
    try:
        chosen = device_augment.choose_path(options.augment_on, recipe, has_gpu,
                                            options.distribute)
    except ValueError as error:
        raise RunError(str(error)) from None
    began = saved and saved["augment_on"]
    if began and options.augment_on == "auto":
        chosen = began
    elif began and began != chosen:
        raise RunError(f"{run_dir} began on the {began} augmentation path; its backups "
                       f"resume only there. Pass --augment-on {began} (or auto), or "
                       f"--run-id NAME for a separate run.")
    config["augment_on"] = chosen
    return chosen


def _stage_callbacks(recipe, options, run_dir, prepared, stage, base_lr, history, guard,
                     resume_from=None):
    """The callbacks of one stage's fit, in the order they must run."""
    backup_dir = os.path.join(run_dir, stage.backup)
    best_so_far = record.best_epoch(history, recipe.monitor)  # best.keras must beat it
    callback_list = [guard, EpochSync(prepared.train_batches)]
    callback_list += stage.schedule.callbacks(base_lr, recipe.epochs, state_dir=backup_dir)
    callback_list += [
        EpochLog(),
        RunProgress(recipe.name, recipe.epochs, [row.get("seconds") for row in history]),
        *([Deadline(options.deadline, [row.get("seconds") for row in history])]
          if options.deadline is not None else []),
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(os.path.join(run_dir, record.BEST), monitor=recipe.monitor,
                              mode="min" if "loss" in recipe.monitor else "max",
                              save_best_only=True,
                              initial_value_threshold=best_so_far[0] if best_so_far else None),
        *prepared.extra_callbacks,
    ]
    if recipe.early_stopping:
        callback_list.append(recipe.early_stopping.callback())
    if options.tensorboard:  # scalars per epoch: loss, accuracy, lr, seconds
        callback_list.append(keras.callbacks.TensorBoard(
            os.path.join(run_dir, "tensorboard"), histogram_freq=0, write_graph=False))
    return callback_list + [keras.callbacks.CSVLogger(os.path.join(run_dir, record.HISTORY),
                                                      append=True),
                            AtomicBackupAndRestore(backup_dir, resume_from)]


def _resume_point(recipe, run_dir, stage):
    """(epochs done, backup generation to load or None) for the stage: its newest
    backup that reads and whose rows history.csv holds; a damaged file passed over
    is named, and one that leaves nothing to resume from is refused with the fix."""
    backup_dir = os.path.join(run_dir, stage.backup)
    history_path = os.path.join(run_dir, record.HISTORY)
    try:
        logged = record.logged_epochs(history_path)
    except record.HistoryError:
        raise RunError(f"{recipe.name}: {history_path} is not a run history (no 'epoch' column "
                       f"header), so the rows of the epochs trained are lost. Delete it and "
                       f"{backup_dir} and rerun the same command to train the stage again "
                       f"(or pass --run-id NAME for a separate run).") from None
    epoch, folder, notes = backup.resume_point(backup_dir, logged)
    if folder is None and not notes:
        return stage.first_epoch, None  # nothing saved yet: the stage starts
    if folder is None:
        raise RunError(f"{recipe.name}: nothing in {backup_dir} can resume the run: "
                       f"{'; '.join(notes)}. Delete {backup_dir} and rerun the same command to "
                       f"train this stage again from epoch {stage.first_epoch + 1} (or pass "
                       f"--run-id NAME for a separate run).")
    for note in notes:
        print(f"{recipe.name}: {note}; resuming from the generation before it "
              f"({folder}), which trains again what followed.", file=sys.stderr)
    best = os.path.join(run_dir, record.BEST)
    if os.path.exists(best) and not record.zip_reads(best):
        raise RunError(f"{recipe.name}: {best} is damaged, and the best epoch's weights with it; "
                       f"pass --run-id NAME to train the run again (or delete {run_dir}).")
    plateau = os.path.join(backup_dir, record.PLATEAU_STATE)
    if os.path.exists(plateau):
        try:
            record.read_json(plateau)
        except (OSError, ValueError) as error:
            raise RunError(f"{recipe.name}: {plateau} is damaged ({error}), and with it the "
                           f"plateau counters of the epoch to resume; pass --run-id NAME to "
                           f"train the run again.") from None
    return epoch, folder


def _fit_stage(recipe, options, placement, run_dir, prepared, stage):
    """Compiles the stage's optimizer and fits its epochs, resuming from its backup."""
    model = prepared.trainer
    if recipe.transfer:
        transfer.set_backbone_trainable(prepared.model, stage.name != "head")
    with placement.scope():
        base_lr = compile_model(model, recipe, stage.optimizer, stage.schedule,
                                steps_per_execution=options.steps_per_execution)
    placement.prepare(model)
    done, resume_from = _resume_point(recipe, run_dir, stage)
    history = record.truncate_history(os.path.join(run_dir, record.HISTORY), done)
    if done > stage.first_epoch or (done and stage.name == "finetune"):
        print(f"{recipe.name}: resuming {run_dir} after epoch {done} of {recipe.epochs}.")
    guard = InterruptGuard()
    callback_list = _stage_callbacks(recipe, options, run_dir, prepared, stage, base_lr,
                                     history, guard, resume_from)
    try:
        with placement.scope(), guard:
            model.fit(prepared.train_batches, validation_data=prepared.val_batches,
                      initial_epoch=stage.first_epoch, epochs=stage.end_epoch,
                      callbacks=callback_list, shuffle=False, verbose=options.verbose)
    except KeyboardInterrupt:
        record.write_status(run_dir, "interrupted",
                            reason="stopped by Ctrl-C; rerun the same command to resume")
        raise
    except DeadlineReached as reached:
        reason = (f"stopped at the deadline after epoch {reached.args[0]} of {recipe.epochs}; "
                  f"rerun the same command to resume")
        record.write_status(run_dir, "interrupted", reason=reason)
        raise RunStopped(f"{recipe.name}: {reason}.") from None
    except OSError as error:  # a full disk or a vanished folder while saving
        # The epoch in progress (EpochSync sets it as each begins; `done` before
        # the first), counted from 1 as Keras's progress lines count them.
        epoch = max(prepared.train_batches.epoch, done) + 1
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                           errno.EPERM):
            reason = (f"could not write {error.filename or 'a file'} "
                      f"({error.strerror or error}) in epoch {epoch}")
            fix = "free space (or make the folder writable) and rerun the same command to resume"
        else:
            reason = f"a file failed in epoch {epoch}: {error}"
            fix = "rerun the same command: it resumes from the newest backup that reads"
        record.write_status(run_dir, "failed", reason=reason)
        raise RunError(f"{recipe.name}: {reason}. The files written before are intact; "
                       f"{fix}.") from None
    except Exception as error:
        record.write_status(run_dir, "failed", reason=f"{type(error).__name__}: {error}")
        raise
    if stage.name == "head":
        record.save_model(prepared.model, os.path.join(run_dir, record.HEAD))


def _finish(recipe, options, run_dir, prepared, full_epochs, start):
    """A NaN check, the test scores, metrics.json, model.keras and the status."""
    history = record.read_history(os.path.join(run_dir, record.HISTORY))
    nan_epochs = [row["epoch"] for row in history if not np.isfinite(row.get("loss", 0.0))]
    if nan_epochs:
        reason = f"loss became NaN in epoch {nan_epochs[0] + 1} (TerminateOnNaN stopped the run)"
        record.write_status(run_dir, "failed", reason=reason)
        raise RunError(f"{recipe.name}: {reason}. Lower the learning rate or check the data.")
    model, test = prepared.model, prepared.test
    if prepared.trainer is not model:  # the device path compiled its wrapper
        loss, scored = loss_and_metrics(recipe)  # instances of its own, as below
        model.compile(loss=loss, metrics=scored)
    best_path = os.path.join(run_dir, record.BEST)
    best_model = keras.models.load_model(best_path) if os.path.exists(best_path) else model
    test_scores = {}
    if options.score_test and (not prepared.val_from_test or len(prepared.val[0]) < len(test[0])):
        print(f"{recipe.name}: training done; scoring the final and the best model on the "
              f"{len(test[0]):,} test images.", flush=True)
        test_batches = _evaluation_batches(recipe, prepared.normalizer, *test,
                                           prepared.data.num_classes)
        test_scores["final_test_accuracy"] = float(model.evaluate(test_batches, verbose=0)[1])
        if best_model is not model:
            best_loss, best_metrics = loss_and_metrics(recipe)
            best_model.compile(loss=best_loss, metrics=best_metrics)
            test_scores["best_test_accuracy"] = float(best_model.evaluate(test_batches, verbose=0)[1])
    metrics = _summary(history, recipe, prepared.params, len(prepared.train[0]),
                       prepared.val_from_test, test_scores)
    metrics.update(wall_seconds_this_session=time.time() - start, quick=options.quick,
                   full_recipe_epochs=full_epochs, **prepared.noise_summary)
    record.write_json(os.path.join(run_dir, record.METRICS), metrics)
    # The best model for use outside the suite: raw pixels in, plain Keras layers.
    save_inference_model(best_model, prepared.normalizer, os.path.join(run_dir, record.MODEL))
    record.write_status(run_dir, "completed")
    return metrics


__all__ = ["train", "RunOptions", "RunError", "DataError", "RecipeError"]
