"""The backup of an unfinished run: generations of its training state.

    backup/epoch-00007/  latest.weights.h5, seed_states.npz, training_metadata.json
    backup/epoch-00008/  the newest; at most two generations are kept

Each generation is written into backup/.partial, read back in full, then renamed
into place, so a kill or a full disk never leaves a half-written generation under
its final name. A generation that will not read (a truncated file, a damaged
disk) is passed over for the one before it, which trains one epoch again. A
backup written before generations existed (the files directly in backup/) reads
as one generation.
"""

import json
import os
import shutil

WEIGHTS = "latest.weights.h5"
SEEDS = "seed_states.npz"
METADATA = "training_metadata.json"
KEEP = 2  # the newest generation and the one it falls back to
PARTIAL = ".partial"


def _folder_name(epoch):
    return f"epoch-{epoch:05d}"


def generations(backup_dir):
    """Generation folders, newest first (a pre-generation backup last)."""
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        if name.startswith("epoch-") and name[6:].isdigit():
            found.append((int(name[6:]), os.path.join(backup_dir, name)))
    found.sort(reverse=True)
    if os.path.exists(os.path.join(backup_dir, METADATA)):  # the pre-generation layout
        found.append((None, backup_dir))
    return [folder for _, folder in found]


def check(folder):
    """(epoch, None) for a generation that reads in full, else (None, problem) naming
    the damaged file."""
    path = os.path.join(folder, METADATA)
    try:
        with open(path) as stream:
            epoch = json.load(stream)["epoch"]
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch {epoch!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{path} is damaged ({type(error).__name__}: {error})"
    path = os.path.join(folder, WEIGHTS)
    try:
        import h5py

        with h5py.File(path, "r") as weights:  # every array read back, not just the index
            weights.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        return None, f"{path} is damaged ({str(error).splitlines()[0][:160]})"
    path = os.path.join(folder, SEEDS)
    if os.path.exists(path):
        try:
            import numpy as np

            with np.load(path) as seeds:
                for name in seeds.files:
                    seeds[name]
        except (OSError, ValueError, EOFError) as error:
            return None, f"{path} is damaged ({type(error).__name__}: {error})"
    return epoch, None


def resume_point(backup_dir, epochs_logged):
    """(epoch, folder, notes): the newest generation that reads and whose epoch has
    every row before it in history.csv (`epochs_logged`: how many epochs from the
    first have their row), with a line for each newer one passed over; (None,
    None, notes) when none qualifies."""
    notes = []
    for folder in generations(backup_dir):
        epoch, problem = check(folder)
        if problem:
            notes.append(problem)
            continue
        if epoch > epochs_logged:
            notes.append(f"history.csv holds the rows of {epochs_logged} epochs, but "
                         f"{os.path.join(folder, METADATA)} is after epoch {epoch}")
            continue
        return epoch, folder, notes
    return None, None, notes


def save(backup_dir, epoch, write_weights, seeds):
    """Writes generation `epoch`: write_weights(path) saves the weights, `seeds` maps
    names to random-generator states. Read back before it replaces anything."""
    import numpy as np

    os.makedirs(backup_dir, exist_ok=True)
    partial = os.path.join(backup_dir, PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    write_weights(os.path.join(partial, WEIGHTS))
    np.savez(os.path.join(partial, SEEDS), **seeds)
    with open(os.path.join(partial, METADATA), "w") as stream:
        json.dump({"epoch": epoch, "batch": 0}, stream)
        stream.flush()
        os.fsync(stream.fileno())
    written, problem = check(partial)
    if problem:
        raise OSError(f"the backup just written does not read back: {problem}")
    target = os.path.join(backup_dir, _folder_name(epoch))
    shutil.rmtree(target, ignore_errors=True)  # an epoch trained again after a fallback
    os.rename(partial, target)
    for name in (WEIGHTS, SEEDS, METADATA):  # a pre-generation backup is superseded
        if os.path.exists(os.path.join(backup_dir, name)):
            os.remove(os.path.join(backup_dir, name))
    for old in [f for f in generations(backup_dir) if f != backup_dir][KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
