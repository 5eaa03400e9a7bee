"""Label noise on the training labels (never the test labels), seeded.

kinds:
  symmetric        each label, with probability `rate`, becomes one of the other
                   C - 1 classes uniformly (paper 004's code, Co-teaching)
  symmetric_exact  exactly round(rate * n_c) labels of each class c flip, each to
                   one of the other classes uniformly
  uniform          with probability `rate`, a label is redrawn from all C classes,
                   the true one included: the effective flip rate is rate (C-1)/C
  asymmetric       with probability `rate`, CIFAR-10's class map: truck -> automobile,
                   bird -> airplane, deer -> horse, cat <-> dog (others unchanged)
  pair             with probability `rate`, y -> (y + 1) mod C
"""

import dataclasses
from typing import ClassVar

import numpy as np

from foundation.spec import Section

KINDS = ("symmetric", "symmetric_exact", "uniform", "asymmetric", "pair")
# CIFAR-10 class indices: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog,
# 6 frog, 7 horse, 8 ship, 9 truck.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclasses.dataclass(frozen=True)
class Noise(Section):
    """A recipe's `noise` section: `rate` of the training labels changed as `kind` says,
    drawn from `seed` (None: the run's seed)."""
    field: ClassVar[str] = "noise"
    kind: str = None  # one of KINDS
    rate: float = None  # 0-1
    seed: int | None = None

    def check(self, dataset="cifar10"):
        """Raises ValueError naming the field that cannot run on `dataset`."""
        kind, rate, seed = self.kind, self.rate, self.seed
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be a number in [0, 1]; got {rate!r}")
        if kind == "asymmetric" and dataset != "cifar10":
            raise ValueError(f"kind 'asymmetric' is CIFAR-10's class map; got dataset {dataset!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a whole number >= 0 or null; got {seed!r}")
        return self

    def corrupt(self, labels, num_classes, run_seed):
        """(noisy labels, mask of the labels that changed, the seed drawn from)."""
        seed = run_seed if self.seed is None else self.seed
        return (*corrupt_labels(labels, num_classes, self.kind, self.rate, seed), seed)


def _other_class(labels, num_classes, rng):
    """A class drawn uniformly from the C - 1 classes other than each label."""
    offset = rng.integers(1, num_classes, size=len(labels))
    return (labels + offset) % num_classes


def corrupt_labels(labels, num_classes, kind, rate, seed):
    """Returns (noisy labels, boolean mask of the labels that changed)."""
    Noise(kind, rate).check("cifar10" if kind == "asymmetric" else "any")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 7])
    noisy = labels.copy()
    if kind == "symmetric_exact":
        for cls in range(num_classes):
            members = np.flatnonzero(labels == cls)
            chosen = rng.choice(members, size=int(round(rate * len(members))), replace=False)
            noisy[chosen] = _other_class(labels[chosen], num_classes, rng)
        return noisy, noisy != labels
    hit = rng.random(len(labels)) < rate
    if kind == "symmetric":
        noisy[hit] = _other_class(labels[hit], num_classes, rng)
    elif kind == "uniform":
        noisy[hit] = rng.integers(0, num_classes, size=int(hit.sum()))
    elif kind == "pair":
        noisy[hit] = (labels[hit] + 1) % num_classes
    else:  # asymmetric
        mapped = np.array([CIFAR10_ASYMMETRIC.get(c, c) for c in range(num_classes)])
        noisy[hit] = mapped[labels[hit]]
    return noisy, noisy != labels
