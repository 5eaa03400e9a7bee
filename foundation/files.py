"""Atomic file writes: a file is written aside, then renamed over its target, so a
kill or a full disk leaves the previous file whole. Every writer of a record or a
report goes through `atomic_file` (or its text and JSON forms)."""

import json
import os
import tempfile

def _file_mode():
    """The mode open() gives a new file under this process's umask (0644 under 022);
    mkstemp's own 0600 would make records unreadable to the rest of a group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_text(path, text):
    """Writes via a temporary file in the same folder and renames it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_file(path, write):
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

    atomic_file(path, lambda temporary: np.savez(temporary, **arrays))


def zip_reads(path):
    """Whether a .keras file (a zip archive) reads back whole."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path):
    with open(path) as stream:
        return json.load(stream)
