"""training/allocator.py: glibc keeps freed memory, so a reallocation faults no pages."""

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Five 64 MiB arrays allocated and freed after a first one: with glibc's default
# thresholds each is fresh memory from the kernel (page faults); with freed
# memory kept, the first one's memory is reused.
SCRIPT = """
import resource, sys
sys.path.insert(0, {root!r})
import numpy as np
from training import allocator
print("applied", allocator.tune_for_backend({backend!r}))
np.ones(8 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    array = np.ones(8 << 20)
    del array
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def run(backend, **environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT, backend=backend)],
                            env={**env, **environment}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return lines["applied"] == "True", int(lines["faults"])


def test_freed_memory_is_reused_on_the_torch_backend():
    applied, faults = run("torch")
    assert applied
    assert faults < 100, faults  # 64 MiB of fresh pages would be thousands of faults


def test_other_backends_and_the_users_own_settings_are_left_alone():
    applied, default_faults = run("tensorflow")
    assert not applied
    assert default_faults > 1000, default_faults  # the contrast the test above relies on
    applied, _ = run("torch", MALLOC_MMAP_THRESHOLD_="131072")
    assert not applied
