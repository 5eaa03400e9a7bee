"""The run folder: its layout, and the writers and readers of its files.

runs/<experiment>/<run-id>/ (engine.py trains it; collect.py copies RECORD out):
  config.json         resolved recipe, backend, versions, seed, git commit, data source,
                      augmentation path
  status.json         running | completed | failed (with reason) | interrupted | damaged
  history.csv         one row per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds
  metrics.json        final and best accuracies, parameters, wall time, images/s
  best.keras          the best epoch by the recipe's monitor (loads with `import cifar_repro`)
  model.keras         best.keras for inference: raw pixels in, plain Keras layers (loads anywhere)
  noise.npz           with label noise: the true and noisy labels and the flipped indices
  head.keras          with transfer: the network after its head-only stage
  evaluation.json     experiments/evaluate.py's scores
  accuracy.png, loss.png, lr.png and a .json of each figure's numbers (plots/run_plots.py)
  backup/, backup-head/  the newest backup generations while unfinished (training/backup.py),
                      with plateau_state.json (the plateau counters) beside them
  .lock               the one process writing the folder (FolderLock)
Every file is written atomically (foundation/files.py).
"""

import csv
import io
import math
import os
import platform
import subprocess
import time

from foundation.files import (FILE_MODE, atomic_file, atomic_write_text,  # noqa: F401
                          read_json, write_json, write_npz, zip_reads)

CONFIG, STATUS, HISTORY, METRICS = "config.json", "status.json", "history.csv", "metrics.json"
BEST, MODEL, HEAD = "best.keras", "model.keras", "head.keras"
NOISE, EVALUATION, LOCK = "noise.npz", "evaluation.json", ".lock"
BACKUP, BACKUP_HEAD, PLATEAU_STATE = "backup", "backup-head", "plateau_state.json"
# The history columns every epoch logs: what best.keras and early stopping may follow.
MONITORS = ("val_accuracy", "val_loss", "accuracy", "loss")
PLOTS = ("accuracy", "loss", "lr")  # each as .png and .json
# What a finished record is, without weights: what collect.py copies into results/.
RECORD = (CONFIG, STATUS, HISTORY, METRICS) + tuple(
    f"{name}.{extension}" for name in PLOTS for extension in ("png", "json"))

STATUSES = ("running", "completed", "failed", "interrupted")


def save_model(model, path):
    """model.save(path) (a .keras file), atomically."""
    atomic_file(path, model.save)


def write_status(run_dir, status, reason=None, **extra):
    if status not in STATUSES:
        raise ValueError(f"Unknown run status {status!r}; expected one of {STATUSES}.")
    value = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if status == "running":  # who runs it: read_status tells a dead process from a live one
        value.update(pid=os.getpid(), host=platform.node())
    if reason:
        value["reason"] = reason
    write_json(os.path.join(run_dir, STATUS), value)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_status(run_dir):
    """status.json; a `running` run whose process on this machine is gone (killed,
    crashed, the machine restarted) reads as `interrupted`."""
    path = os.path.join(run_dir, STATUS)
    if not os.path.exists(path):
        return None
    try:
        status = read_json(path)
        if not isinstance(status, dict) or status.get("status") not in STATUSES:
            raise ValueError(f"status {status!r}")
    except (OSError, ValueError) as error:
        return {"status": "damaged", "reason": f"{path} is damaged ({type(error).__name__}); "
                                               f"the run's state is read from its other files"}
    if (status.get("status") == "running" and status.get("host") == platform.node()
            and isinstance(status.get("pid"), int) and not _alive(status["pid"])):
        status = {**status, "status": "interrupted",
                  "reason": f"process {status['pid']} ended without finishing; rerun the "
                            f"same command to resume"}
    return status


class HistoryError(ValueError):
    """A history.csv that cannot be read as a run's history."""


def _history_rows(path):
    """history.csv's header and one row per epoch, in order: a repeated header and
    a repeated epoch (two writers, or a crash between writes) are dropped, the
    later row of an epoch kept."""
    try:
        with open(path, newline="") as stream:
            text = stream.read()
    except UnicodeDecodeError:
        raise HistoryError(f"{path} is not text; it is not a run history.") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if rows and not text.endswith("\n"):  # a row cut short: its last number may be too
        rows.pop()
    if not rows:
        return None, []
    header = rows[0]
    if not header or header[0] != "epoch":
        raise HistoryError(f"{path} does not start with an 'epoch' column header; it is not "
                           f"a run history. Move it away and rerun to start the run over.")
    by_epoch = {}
    for row in rows[1:]:
        if row == header or len(row) != len(header):
            continue
        try:
            by_epoch[int(float(row[0]))] = row
        except ValueError:
            continue
    return header, [by_epoch[epoch] for epoch in sorted(by_epoch)]


def read_history(path):
    """history.csv as a list of dicts with float values (epoch as int)."""
    if not os.path.exists(path):
        return []
    header, rows = _history_rows(path)
    history = []
    for row in rows:
        parsed = {}
        for key, value in zip(header, row):
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


def logged_epochs(path):
    """How many epochs from the first have their row in history.csv, without a gap."""
    if not os.path.exists(path):
        return 0
    _, rows = _history_rows(path)
    epochs = {int(float(row[0])) for row in rows}
    count = 0
    while count in epochs:
        count += 1
    return count


def truncate_history(path, epochs_done):
    """Keeps the rows of epochs < epochs_done (the backup's), one each, so a resumed
    run logs each epoch once; repeated headers and epochs are repaired."""
    if not os.path.exists(path):
        return []
    header, rows = _history_rows(path)
    if header is None:
        return []
    kept = [header] + [row for row in rows if int(float(row[0])) < epochs_done]
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


class FolderBusy(RuntimeError):
    """Another live process holds a folder's lock."""


class FolderLock:
    """An exclusive lock on `folder` for one writer: fcntl.flock on <folder>/.lock,
    which the kernel releases when the process ends, however it ends, so a stale
    file after `kill -9` never blocks the next run. The file holds the owner's pid.

        with FolderLock(run_dir, "run"):
            ...  # this process alone writes run_dir
    """

    def __init__(self, folder, what="folder"):
        self.folder, self.what = folder, what
        self.path = os.path.join(folder, LOCK)
        self._stream = None

    def acquire(self):
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        stream = open(self.path, "a+")
        try:
            fcntl.flock(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            owner = stream.read().strip() or "unknown"
            stream.close()
            raise FolderBusy(f"{self.what} {self.folder} is in use by process {owner}; wait for "
                             f"it to finish (or stop it), or pick another folder.") from None
        stream.seek(0)
        stream.truncate()
        stream.write(f"{os.getpid()}\n")
        stream.flush()
        self._stream = stream
        return self

    def release(self):
        if self._stream is not None:
            self._stream.close()  # closing the descriptor drops the flock
            self._stream = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
