"""The run record: atomic writes, status, config and history files of a run directory."""

import csv
import io
import json
import math
import os
import subprocess
import tempfile
import time

STATUSES = ("running", "completed", "failed", "interrupted")


def atomic_write_text(path, text):
    """Writes via a temporary file in the same folder and renames it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _atomic_file(path, write):
    """Calls write(temporary_path) and renames the result over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    root, extension = name.split(".", 1) if "." in name else (name, "")
    temporary = os.path.join(folder, f".tmp-{root}-{os.getpid()}.{extension}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_npz(path, **arrays):
    """np.savez, atomically."""
    import numpy as np

    _atomic_file(path, lambda temporary: np.savez(temporary, **arrays))


def save_model(model, path):
    """model.save(path) (a .keras file), atomically."""
    _atomic_file(path, model.save)


def write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


def write_status(run_dir, status, reason=None, **extra):
    if status not in STATUSES:
        raise ValueError(f"Unknown run status {status!r}; expected one of {STATUSES}.")
    value = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if reason:
        value["reason"] = reason
    write_json(os.path.join(run_dir, "status.json"), value)


def read_status(run_dir):
    path = os.path.join(run_dir, "status.json")
    return read_json(path) if os.path.exists(path) else None


def read_history(path):
    """history.csv as a list of dicts with float values (epoch as int)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    history = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                parsed[key] = value
        parsed["epoch"] = int(parsed["epoch"])
        history.append(parsed)
    return history


def best_epoch(history, monitor):
    """(value, epoch) of the best finite `monitor` value; ties go to the earliest
    epoch, as ModelCheckpoint saves only on strict improvement. None if none."""
    pairs = [(row[monitor], row["epoch"]) for row in history
             if isinstance(row.get(monitor), float) and math.isfinite(row[monitor])]
    if not pairs:
        return None
    sign = 1 if "loss" in monitor else -1
    return min(pairs, key=lambda pair: (sign * pair[0], pair[1]))


def truncate_history(path, epochs_done):
    """Keeps the rows of epochs < epochs_done, so a resumed run logs each epoch once."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        return []
    kept = [rows[0]] + [row for row in rows[1:] if row and int(float(row[0])) < epochs_done]
    text = io.StringIO()
    csv.writer(text).writerows(kept)  # the excel dialect, as CSVLogger writes it
    atomic_write_text(path, text.getvalue())
    return read_history(path)


def git_commit():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None
