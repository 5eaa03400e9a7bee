"""A recipe is plain data: everything a run needs, each value with its unit.

`--set key=value` edits it by dotted path (e.g. `optimizer.learning_rate=0.05`,
`schedule.t_max=100`); every edit is checked before anything runs.
"""

import copy
import dataclasses
import difflib
import json
import math

from data.augment import Augmenter
from data.cifar import DATASETS, VAL_SELECTIONS
from data.mixing import Mixer, mixer
from data.noise import Noise
from data.normalize import Normalization, normalization
from foundation import spec
from training import schedules
from training import optimizer_specs
from training.optimizer_specs import Optimizer
from training.record import MONITORS
from training.schedules import Schedule
from training.stopping import EarlyStopping
from training.transfer import Transfer


class RecipeError(ValueError):
    """A recipe or a --set edit that cannot run."""


@dataclasses.dataclass
class Recipe:
    name: str
    paper: str  # "000".."004", "he2015" or "suite"
    model: str  # a name in models.MODELS
    epochs: int  # full passes over the training set
    batch_size: int  # training images per optimizer step
    optimizer: Optimizer  # training.optimizer_specs: SGD(learning_rate=0.1, momentum=0.9), ...
    schedule: Schedule  # training.schedules: Cosine(t_max=200), KthStep(), ...
    normalization: Normalization  # data.normalize: Channel(stats="kuangliu"), PerImage(), ...
    augment: list = dataclasses.field(default_factory=list)  # ops of data.augment
    model_args: dict = dataclasses.field(default_factory=dict)
    dataset: str = "cifar10"  # cifar10 | cifar100
    label_mode: str = "fine"  # CIFAR-100: fine (100 classes) | coarse (20)
    label_smoothing: float = 0.0
    val_split: int = 0  # training images held out as validation; 0: the test set validates
    # How val_split picks them: "run_seed" (a permutation seeded by the run's seed) or
    # "numpy_seed0_choice" (np.random.seed(0); np.random.choice: paper 004's norm study)
    val_selection: str = "run_seed"
    train_images: int = 0  # train on only the first N (after the split); 0: all
    # Validate each epoch on only the first N validation images (0: all); the final and
    # best models are then scored on the whole test set at the end.
    val_images: int = 0
    eval_batch_size: int = 500  # images per evaluation step (does not change results)
    # The PyTorch backend's fast path (models/native.py kernels, native_graph.py's plan):
    # the same function to float32 rounding; false runs Keras's own layers and call.
    fast_path: bool = True
    monitor: str = "val_accuracy"  # what best.keras keeps the best of
    early_stopping: EarlyStopping = None  # training.stopping: monitor, patience, ...; None: off
    mixup: Mixer = None  # data.mixing.Mixer(kind, alpha, p, gate, stop_epoch); None: off
    noise: Noise = None  # data.noise: training-label noise (kind, rate 0-1, seed); None: off
    transfer: Transfer = None  # training.transfer: start from a finished run; None: from scratch
    paper_accuracy: float = None  # percent, as reported
    # What paper_accuracy measures: "best_test" (the test accuracy of the best epoch; the
    # papers validated on the test set) or "max_val" (the highest validation accuracy)
    paper_measure: str = "best_test"
    paper_source: str = ""  # where paper_accuracy comes from
    notes: str = ""  # choices made where the paper is ambiguous

    def __post_init__(self):
        """The typed sections from their dict form (as config.json and --set hold
        them), checked with each family's own messages."""
        try:
            if isinstance(self.optimizer, dict):
                self.optimizer = optimizer_specs.optimizer(self.optimizer)
            if isinstance(self.schedule, dict):
                epochs = self.epochs if isinstance(self.epochs, int) and self.epochs >= 1 else 1
                self.schedule = schedules.schedule(self.schedule, epochs)
            if isinstance(self.normalization, dict):
                self.normalization = normalization(self.normalization)
            self.early_stopping = EarlyStopping.parse(self.early_stopping)
            self.transfer = Transfer.parse(self.transfer)
            self.noise = Noise.parse(self.noise)
        except (ValueError, TypeError, KeyError) as error:
            raise RecipeError(str(error).strip("'\"")) from None
        try:
            self.mixup = mixer(self.mixup)
        except (ValueError, TypeError) as error:
            raise RecipeError(f"mixup: {error}") from None

    def to_dict(self):
        """Plain data (config.json): each section as its dict form."""
        return {field.name: copy.deepcopy(spec.to_data(getattr(self, field.name)))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, value):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise RecipeError(f"Unknown recipe field(s) {unknown}; expected {sorted(names)}.")
        return cls(**copy.deepcopy(value))


# Recipe fields that describe a run or choose how it computes, not what it trains:
# they may change under a run (a resume accepts it; the report still calls it full).
DESCRIPTIVE_FIELDS = ("notes", "paper_source", "paper_accuracy", "paper_measure", "eval_batch_size",
                      "fast_path")


def training_fields(recipe_dict):
    """A recipe dict without its DESCRIPTIVE_FIELDS."""
    return {k: v for k, v in recipe_dict.items() if k not in DESCRIPTIVE_FIELDS}


def normalised_recipe(value):
    """A recorded recipe's dict as today's Recipe writes it (missing fields and a
    section's defaults filled in); the dict itself where it no longer parses."""
    try:
        return Recipe.from_dict(value).to_dict()
    except (RecipeError, TypeError):
        return value


def _family_keys(family):
    """Every field some kind of the family declares, and its discriminator."""
    kinds = spec.classes(family).values()
    return {next(iter(kinds)).key} | {name for cls in kinds for name in cls.field_names()}


# Keys --set may add to a section even when the recipe does not set them yet.
OPTIONAL_KEYS = {
    "optimizer": _family_keys("optimizer"),
    "schedule": _family_keys("schedule"),
    "normalization": _family_keys("normalization"),
    "early_stopping": set(EarlyStopping.field_names()),
    "mixup": set(Mixer.field_names()),
    "noise": set(Noise.field_names()),
    "transfer": set(Transfer.field_names()),
}

# The sections whose discriminator a --set may switch: the new kind keeps the fields
# its class declares (a schedule: those carried_from allows), the others go.
SWITCHED = {("schedule", "kind"): "schedule", ("optimizer", "name"): "optimizer",
            ("normalization", "kind"): "normalization"}


def _switched(family, old, new, fields):
    cls = spec.classes(family).get(new)
    if cls is None:
        return fields  # the recipe check names the unknown kind
    declared = set(cls.field_names())
    if family == "schedule":
        declared &= cls.carried_from(old)
    return {key: value for key, value in fields.items()
            if key == cls.key or key in declared}


def _parse_value(key, text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    # JSON as Python reads it takes NaN, Infinity and 1e400; no recipe number is
    # meant to be any of them (a learning rate of Infinity trained to a NaN loss).
    if not all(math.isfinite(number) for number in _numbers(value)):
        raise RecipeError(f"--set {key}: numbers must be finite; got {text!r}.")
    return value


def _numbers(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, dict)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _numbers(item)


def _type_name(value):
    names = {bool: "true or false", int: "a whole number", float: "a number",
             str: "a string", list: "a list", dict: "a group of keys"}
    return names.get(type(value), type(value).__name__)


def apply_override(recipe, assignment):
    """Applies one `key=value` and checks the result; returns a new recipe."""
    return apply_overrides(recipe, [assignment])


def apply_overrides(recipe, assignments):
    """Applies `key=value` edits in order, then checks the recipe they make, so that
    edits that only make sense together (a new schedule kind and its fields) can be
    given one after the other (the edits change the plain-data form, which becomes a
    typed recipe once they are all in). Each edit's type is checked as it is applied."""
    data = recipe.to_dict()
    for assignment in assignments:
        data = _apply(data, assignment)
    recipe = Recipe.from_dict(data)
    validate(recipe)
    return recipe


def _apply(data, assignment):
    """One `key=value` edit of a recipe's plain data (Recipe.to_dict()); returns it."""
    if "=" not in assignment:
        raise RecipeError(f"--set expects key=value; got {assignment!r}.")
    key, text = assignment.split("=", 1)
    path = key.strip().split(".")
    value = _parse_value(key.strip(), text.strip())
    top_fields = list(data)
    if path[0] not in data:
        close = difflib.get_close_matches(path[0], top_fields, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise RecipeError(f"--set: unknown key {key!r}.{hint} Keys: {', '.join(top_fields)}.")
    target = data
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[:depth + 1])
        if isinstance(target, list):  # a list's item by its index: augment.2.p
            if not (part.isdigit() and int(part) < len(target)):
                raise RecipeError(f"--set: {where!r}: {'.'.join(path[:depth])} has items "
                                  f"0 to {len(target) - 1}; got {part!r}.")
            target = target[int(part)]
            continue
        if target.get(part) is None and part in OPTIONAL_KEYS:
            target[part] = {}
        if not isinstance(target.get(part), (dict, list)):
            raise RecipeError(f"--set: {where!r} is not a group of keys.")
        target = target[part]
    if not isinstance(target, dict):
        raise RecipeError(f"--set: {key!r} names an item of a list; set one of its keys "
                          f"(e.g. {key}.p) or the whole list ({path[0]}=[...]).")
    leaf = path[-1]
    allowed = set(target) | OPTIONAL_KEYS.get(path[-2] if len(path) > 1 else "", set())
    # A list item's keys (an augmentation op's) are checked by the recipe check below.
    in_list = len(path) > 2 and path[-2].isdigit()
    if len(path) > 1 and path[0] != "model_args" and not in_list and leaf not in allowed:
        raise RecipeError(
            f"--set: unknown key {key!r}; {'.'.join(path[:-1])} takes {', '.join(sorted(allowed))}."
        )
    old = target.get(leaf)
    if old is not None and value is not None:
        numeric = (int, float)
        if isinstance(old, bool) != isinstance(value, bool) or (
            not isinstance(old, bool) and isinstance(old, numeric) and not isinstance(value, numeric)
        ) or (isinstance(old, str) and not isinstance(value, str)) or (
            isinstance(old, (list, dict)) and not isinstance(value, type(old))
        ):
            raise RecipeError(
                f"--set {key}: expected {_type_name(old)} like {json.dumps(old)}, got {text!r}."
            )
        if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float):
            if not value.is_integer():
                raise RecipeError(f"--set {key}: expected a whole number, got {text!r}.")
            value = int(value)
    family = SWITCHED.get(tuple(path))
    if family and value != old:
        kept = _switched(family, old, value, target)
        target.clear()
        target.update(kept)
    target[leaf] = value
    return data


def validate(recipe):
    """Raises RecipeError naming the first field that cannot run."""
    from models import MODELS, check_args

    def need(condition, message):
        if not condition:
            raise RecipeError(message)

    need(recipe.model in MODELS, f"model: unknown network {recipe.model!r}; expected one of {sorted(MODELS)}.")
    need(isinstance(recipe.model_args, dict), f"model_args must be a dict; got {recipe.model_args!r}.")
    try:
        check_args(recipe.model, recipe.model_args)
    except ValueError as error:
        raise RecipeError(str(error)) from None
    # What best.keras (and early stopping) can follow: columns every epoch logs.
    need(recipe.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}; got {recipe.monitor!r}.")
    need(isinstance(recipe.epochs, int) and recipe.epochs >= 1,
         f"epochs must be a whole number >= 1; got {recipe.epochs!r}.")
    need(isinstance(recipe.batch_size, int) and recipe.batch_size >= 1,
         f"batch_size must be a whole number >= 1; got {recipe.batch_size!r}.")
    need(isinstance(recipe.val_split, int) and recipe.val_split >= 0,
         f"val_split must be a whole number >= 0; got {recipe.val_split!r}.")
    need(recipe.paper_measure in ("best_test", "max_val"),
         f"paper_measure must be best_test or max_val; got {recipe.paper_measure!r}.")
    need(isinstance(recipe.fast_path, bool),
         f"fast_path must be true or false; got {recipe.fast_path!r}.")
    need(recipe.val_selection in VAL_SELECTIONS,
         f"val_selection must be one of {', '.join(VAL_SELECTIONS)}; got {recipe.val_selection!r}.")
    need(isinstance(recipe.train_images, int) and recipe.train_images >= 0,
         f"train_images must be a whole number >= 0; got {recipe.train_images!r}.")
    need(isinstance(recipe.val_images, int) and recipe.val_images >= 0,
         f"val_images must be a whole number >= 0; got {recipe.val_images!r}.")
    need(recipe.dataset in ("cifar10", "cifar100"),
         f"dataset must be cifar10 or cifar100; got {recipe.dataset!r}.")
    label_modes = sorted(DATASETS[recipe.dataset].label_keys)
    need(recipe.label_mode in label_modes,
         f"label_mode must be one of {', '.join(label_modes)} for {recipe.dataset}; "
         f"got {recipe.label_mode!r}.")
    need(isinstance(recipe.eval_batch_size, int) and recipe.eval_batch_size >= 1,
         f"eval_batch_size must be a whole number >= 1; got {recipe.eval_batch_size!r}.")
    need(0.0 <= recipe.label_smoothing < 1.0,
         f"label_smoothing must lie in [0, 1); got {recipe.label_smoothing!r}.")
    try:  # each section's own checks, whose messages name the field
        optimizer_specs.optimizer(recipe.optimizer).check()
        schedules.validate(recipe.schedule, recipe.epochs)
        normalization(recipe.normalization).check()
        if recipe.early_stopping:
            recipe.early_stopping.check()
        if recipe.transfer:
            recipe.transfer.check(recipe.epochs)
    except (ValueError, KeyError, TypeError) as error:
        raise RecipeError(str(error)) from None
    need(isinstance(recipe.augment, list), f"augment must be a list of ops; got {recipe.augment!r}.")
    for field, check in (("augment", Augmenter),
                         ("noise", lambda v: v and v.check(recipe.dataset))):
        try:
            check(getattr(recipe, field))
        except (ValueError, TypeError) as error:
            raise RecipeError(f"{field}: {error}") from None
