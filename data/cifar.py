"""CIFAR-10 and CIFAR-100 as uint8 arrays, from keras.datasets or a local copy.

A local copy is the standard python-pickle release: a folder holding
`cifar-10-batches-py/` (or `cifar-100-python/`), that folder itself, or the
`.tar.gz` as downloaded. Every failure is a `DataError` whose message says what
was expected and how to fix it; the command-line tools print it without a
traceback.
"""

import dataclasses
import os
import pickle
import re
import tarfile

import numpy as np

DATA_DIR_ENV = "CIFAR_DATA_DIR"


class DataError(ValueError):
    """The data is missing, corrupt or not what the experiment needs."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # folder name inside the release archive
    archive: str  # the file name of the release archive
    url: str
    train_files: tuple
    test_files: tuple
    label_keys: dict  # label_mode -> pickle key
    num_classes: dict  # label_mode -> number of classes
    class_names: dict  # label_mode -> the classes' names, in label order


DATASETS = {
    "cifar10": DatasetSpec(
        name="CIFAR-10",
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_keys={"fine": b"labels"},
        num_classes={"fine": 10},
        class_names={"fine": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")},
    ),
    "cifar100": DatasetSpec(
        name="CIFAR-100",
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train_files=("train",),
        test_files=("test",),
        label_keys={"fine": b"fine_labels", "coarse": b"coarse_labels"},
        num_classes={"fine": 100, "coarse": 20},
        class_names={
            "fine": tuple(
                "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy "
                "bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock "
                "cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish "
                "forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
                "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange "
                "orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
                "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
                "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone "
                "television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
                "woman worm".split()),
            "coarse": tuple(
                "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
                "household_electrical_devices household_furniture insects large_carnivores "
                "large_man-made_outdoor_things large_natural_outdoor_scenes "
                "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people "
                "reptiles small_mammals trees vehicles_1 vehicles_2".split()),
        },
    ),
}


@dataclasses.dataclass
class CifarData:
    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str  # where the arrays came from, for the run record
    origin: str = "original"  # "original" release, or "jpeg_rebuild" (see _origin)


# ../shared/tools/cifar10_from_jpeg.py names its images 00000.png, 00001.png, ...;
# the original release names them after their source ("domestic_cat_s_000907.png").
JPEG_REBUILD_NAME = re.compile(rb"\d{5}\.png")
ORIGINS = {"original": "original release",
           "jpeg_rebuild": "rebuilt from JPEG (quality ~75), not the original images"}


def _origin(filenames):
    """'jpeg_rebuild' when every image carries the rebuild tool's numbered name."""
    if filenames and all(JPEG_REBUILD_NAME.fullmatch(name) for name in filenames):
        return "jpeg_rebuild"
    return "original"


def _spec(dataset, label_mode):
    if dataset not in DATASETS:
        raise DataError(
            f"Unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}."
        )
    spec = DATASETS[dataset]
    if label_mode not in spec.label_keys:
        raise DataError(
            f"{spec.name} has no label mode {label_mode!r}; expected one of "
            f"{sorted(spec.label_keys)}."
        )
    return spec


def _how_to_fix(spec):
    return (
        f"Download {spec.url} and pass --data-dir pointing at the .tar.gz, at "
        f"the folder that holds it, or at its extracted '{spec.folder}/' "
        f"folder (or set {DATA_DIR_ENV})."
    )


def _parse_batch(raw, where, spec, label_key, num_classes):
    """Turns one unpickled batch into (images, labels, filenames), checking everything."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as error:  # pickle raises many types on corrupt input
        raise DataError(
            f"{where} is not a readable CIFAR batch (corrupt or truncated: "
            f"{type(error).__name__}: {error}). Replace it with a fresh copy. "
            + _how_to_fix(spec)
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DataError(
            f"{where} is not a CIFAR batch: it holds no b'data' entry. "
            + _how_to_fix(spec)
        )
    if label_key not in batch:
        other = [n for n, s in DATASETS.items() if s is not spec]
        raise DataError(
            f"{where} has no {label_key!r} labels: it is not {spec.name} "
            f"(is it {', '.join(DATASETS[n].name for n in other)}?). "
            f"Point --data-dir at a {spec.name} copy."
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{where}: images must be uint8 rows of 3072 values, got "
            f"{data.dtype} array of shape {data.shape}. " + _how_to_fix(spec)
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{where}: {data.shape[0]} images but {labels.shape[0]} labels. "
            + _how_to_fix(spec)
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels must lie in [0, {num_classes - 1}], found "
            f"[{labels.min()}, {labels.max()}]. " + _how_to_fix(spec)
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    filenames = batch.get(b"filenames")
    return np.ascontiguousarray(images), labels, list(filenames) if filenames else []


class _FolderReader:
    def __init__(self, folder):
        self.folder = folder
        self.where = folder

    def read(self, name):
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as handle:
            return handle.read()


class _ArchiveReader:
    def __init__(self, path, folder):
        self.where = path
        self.folder = folder
        try:
            self.archive = tarfile.open(path, "r:*")
            self.members = {m.name: m for m in self.archive.getmembers()}
        except (tarfile.TarError, EOFError, OSError) as error:
            # tarfile lists every compression it tried, a line each: the first line says it.
            reason = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
            raise DataError(
                f"{path} is not a readable .tar.gz (corrupt or truncated: "
                f"{reason}). Download it again."
            ) from None

    def read(self, name):
        member = self.members.get(f"{self.folder}/{name}")
        if member is None:
            return None
        try:
            return self.archive.extractfile(member).read()
        except Exception as error:  # zlib, tarfile and EOF errors alike
            raise DataError(
                f"{self.where}: member {member.name} cannot be read (corrupt "
                f"or truncated archive: {error}). Download it again."
            ) from None


def _holds(path, spec):
    """Where `path` holds `spec`'s release: a reader, or None."""
    if os.path.isfile(path):
        if path.endswith((".tar.gz", ".tgz", ".tar")):
            reader = _ArchiveReader(path, spec.folder)
            if any(n.startswith(spec.folder + "/") for n in reader.members):
                return reader
        return None
    if not os.path.isdir(path):
        return None
    inner = os.path.join(path, spec.folder)
    if os.path.isdir(inner):
        return _FolderReader(inner)
    if os.path.basename(os.path.normpath(path)) == spec.folder or os.path.isfile(
        os.path.join(path, spec.train_files[0])
    ):
        return _FolderReader(path)
    archive = os.path.join(path, spec.archive)
    if os.path.isfile(archive):
        return _holds(archive, spec)
    return None


def _read_split(reader, names, spec, label_key, num_classes):
    images, labels, filenames = [], [], []
    for name in names:
        raw = reader.read(name)
        where = os.path.join(reader.where, name)
        if raw is None:
            raise DataError(
                f"{where} is missing: a {spec.name} copy needs "
                f"{', '.join(spec.train_files + spec.test_files)}. "
                + _how_to_fix(spec)
            )
        x, y, names_read = _parse_batch(raw, where, spec, label_key, num_classes)
        images.append(x)
        labels.append(y)
        filenames += names_read
    return np.concatenate(images), np.concatenate(labels), filenames


def _locate(data_dir, spec):
    """The reader of `spec`'s files in a local copy, or DataError saying what to fetch."""
    path = os.path.expanduser(str(data_dir))
    if not os.path.exists(path):
        raise DataError(f"--data-dir {path} does not exist. " + _how_to_fix(spec))
    reader = _holds(path, spec)
    if reader is None:
        others = [s.name for s in DATASETS.values() if s is not spec and _holds(path, s)]
        if others:
            raise DataError(
                f"{path} holds {others[0]}, but this experiment trains on "
                f"{spec.name}. Point --data-dir at a {spec.name} copy. "
                + _how_to_fix(spec)
            )
        raise DataError(
            f"No {spec.name} found in {path}: expected '{spec.folder}/' or "
            f"'{spec.archive}' there. " + _how_to_fix(spec)
        )
    return reader


def load_local(data_dir, dataset="cifar10", label_mode="fine"):
    """Reads a local copy of the pickle release (folder or .tar.gz)."""
    spec = _spec(dataset, label_mode)
    reader = _locate(data_dir, spec)
    label_key = spec.label_keys[label_mode]
    num_classes = spec.num_classes[label_mode]
    x_train, y_train, train_names = _read_split(reader, spec.train_files, spec, label_key,
                                                num_classes)
    x_test, y_test, test_names = _read_split(reader, spec.test_files, spec, label_key, num_classes)
    return CifarData(x_train, y_train, x_test, y_test, num_classes, source=reader.where,
                     origin=_origin(train_names + test_names))


def _load_keras(dataset, label_mode):
    """keras.datasets: downloads once into ~/.keras/datasets, then reads the cache."""
    spec = _spec(dataset, label_mode)
    import keras

    try:
        if dataset == "cifar10":
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        else:
            (x_train, y_train), (x_test, y_test) = keras.datasets.cifar100.load_data(
                label_mode=label_mode
            )
    except Exception as error:  # no network shows up as several exception types
        raise DataError(
            f"{spec.name} is not cached and could not be downloaded "
            f"({type(error).__name__}: {str(error)[:200]}). "
            + _how_to_fix(spec)
        ) from None
    return CifarData(
        x_train, y_train.reshape(-1).astype(np.int64),
        x_test, y_test.reshape(-1).astype(np.int64),
        spec.num_classes[label_mode], source="keras.datasets",
    )


def load_cifar(dataset="cifar10", data_dir=None, label_mode="fine"):
    """The arrays of `dataset`, from `data_dir`, $CIFAR_DATA_DIR or keras.datasets."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return load_local(data_dir, dataset, label_mode)
    return _load_keras(dataset, label_mode)


def ensure_available(dataset="cifar10", data_dir=None, label_mode="fine"):
    """Raises DataError now, not in a later worker, if `dataset` cannot be read: a
    local copy is found (not read); keras.datasets downloads it once into its cache."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        _locate(data_dir, _spec(dataset, label_mode))
    else:
        _load_keras(dataset, label_mode)


VAL_SELECTIONS = ("run_seed", "numpy_seed0_choice")


def split_validation(x, y, count, seed, selection="run_seed"):
    """Holds out `count` training images as validation: chosen by a permutation
    seeded with `seed`, or ("numpy_seed0_choice") as paper 004's norm study chose
    them: np.random.seed(0); np.random.choice(len(x), count, replace=False)."""
    if not 0 < count < len(x):
        raise DataError(
            f"--val-split must lie in [1, {len(x) - 1}] for {len(x)} training "
            f"images; got {count}."
        )
    if selection == "numpy_seed0_choice":
        held = np.random.RandomState(0).choice(len(x), count, replace=False)
    elif selection == "run_seed":
        held = np.random.default_rng(seed).permutation(len(x))[:count]
    else:
        raise ValueError(f"val_selection must be one of {VAL_SELECTIONS}; got {selection!r}.")
    kept = np.setdiff1d(np.arange(len(x)), held)  # in order, as np.delete leaves them
    held = np.sort(held)
    return (x[kept], y[kept]), (x[held], y[held])
