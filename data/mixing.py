"""Mixup and CutMix on normalised training batches with one-hot labels.

One lambda ~ Beta(alpha, alpha) per batch; each image is mixed with the image at
a random permutation of the batch, and so is its label. Paper 003 computed the
loss as lam * CE(y_a) + (1 - lam) * CE(y_b); cross-entropy is linear in the
target, so that equals CE against the mixed label lam * y_a + (1 - lam) * y_b,
which is what the batch carries. Accuracy is scored against each image's own
label y_a, as paper 003's trainer did (training.losses).

Whether a batch is mixed at all is a gate with probability p, drawn per batch
or per epoch (paper 003: each epoch is a mixup epoch with p = 0.9). Every draw
depends only on (seed, epoch, batch), so a resumed run mixes as the original.
"""

import dataclasses

import numpy as np

from foundation.spec import Section

KINDS = ("mixup", "cutmix")
GATES = ("batch", "epoch")


@dataclasses.dataclass(frozen=True)
class Mixer(Section):
    kind: str = "mixup"
    alpha: float = 1.0  # Beta(alpha, alpha)
    p: float = 1.0  # probability that the gate opens
    gate: str = "batch"  # "batch" or "epoch"
    stop_epoch: int | None = None  # epochs >= this are never mixed (paper 003's clean phase)

    def __post_init__(self):
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}; got {self.kind!r}")
        if self.gate not in GATES:
            problems.append(f"gate must be one of {GATES}; got {self.gate!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            problems.append(f"alpha must be a positive number; got {self.alpha!r}")
        if not (isinstance(self.p, (int, float)) and 0.0 <= self.p <= 1.0):
            problems.append(f"p must lie in [0, 1]; got {self.p!r}")
        if self.stop_epoch is not None and not (
            isinstance(self.stop_epoch, int) and self.stop_epoch >= 0
        ):
            problems.append(f"stop_epoch must be a non-negative integer; got {self.stop_epoch!r}")
        if problems:
            raise ValueError("mixup: " + "; ".join(problems) + ".")

    def epoch_is_mixed(self, seed, epoch):
        """For gate 'epoch': whether this epoch mixes (always True for gate 'batch'
        before stop_epoch, whose batches then draw their own gate)."""
        if self.stop_epoch is not None and epoch >= self.stop_epoch:
            return False
        if self.gate == "batch":
            return True
        return bool(np.random.default_rng([seed, epoch, 2]).random() < self.p)

    def draw(self, seed, epoch, index, size):
        """(lam, partner, rng) for batch `index` of `epoch` (`size` images), or None
        where the gate stays shut; CutMix draws its box from `rng` next."""
        if not self.epoch_is_mixed(seed, epoch):
            return None
        rng = np.random.default_rng([seed, epoch, 3, index])
        if self.gate == "batch" and not rng.random() < self.p:
            return None
        return rng.beta(self.alpha, self.alpha), rng.permutation(size), rng

    def params(self, seed, epoch, index, shape):
        """What batch `index` of `epoch` mixes, or None where the gate stays shut:
        {"lam": the labels' weight, "partner": each image's partner, and for CutMix
        "box": (top, bottom, left, right) pasted from the partner}."""
        drawn = self.draw(seed, epoch, index, shape[0])
        if drawn is None:
            return None
        lam, partner, rng = drawn
        if self.kind == "mixup":
            return {"lam": lam, "partner": partner}
        box, kept = cutmix_box(shape[1:3], lam, rng)
        return {"lam": kept, "partner": partner, "box": box}

    def mix_labels(self, y, params):
        """The labels of a batch mixed as `params` say."""
        if params is None:
            return y
        lam, partner = params["lam"], params["partner"]
        return (lam * y + (1.0 - lam) * y[partner]).astype(y.dtype, copy=False)

    def __call__(self, x, y, seed, epoch, index):
        """Mixes batch `index` of `epoch` when the gate opens; returns (x, y)."""
        params = self.params(seed, epoch, index, x.shape)
        if params is None:
            return x, y
        partner = params["partner"]
        if self.kind == "mixup":
            lam = params["lam"]
            mixed = lam * x + (1.0 - lam) * x[partner]
        else:
            top, bottom, left, right = params["box"]
            mixed = x.copy()
            mixed[:, top:bottom, left:right] = x[partner, top:bottom, left:right]
        return mixed.astype(x.dtype, copy=False), self.mix_labels(y, params)


def mixer(value):
    """A recipe's mixup section from its dict form; None is off, {} the defaults."""
    if value is None or isinstance(value, Mixer):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"must be null or a group of keys ({', '.join(Mixer.field_names())}); "
                         f"got {value!r}.")
    return Mixer(**value)


def cutmix_box(size, lam, rng):
    """CutMix (Yun et al. 2019): a box of area (1 - lam) of the image, centred
    uniformly and clipped at the border, is pasted from the partner; returns
    ((top, bottom, left, right), the share of pixels kept), the labels' weight."""
    height, width = size
    cut_h, cut_w = int(height * np.sqrt(1.0 - lam)), int(width * np.sqrt(1.0 - lam))
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return (int(top), int(bottom), int(left), int(right)), kept
