"""cifar-repro as an installed package (`pip install -e .` in the repository).

`import cifar_repro` registers the suite's Keras objects (its layers, optimizers,
losses and schedules, under the package name "cifar_repro"), so a run's
best.keras loads in any process:

    import cifar_repro, keras
    model = keras.saving.load_model("runs/resnet_deep/seed0/best.keras", compile=False)

best.keras takes normalised images (the recipe's normalisation). A run's
model.keras needs no import at all: raw 0-255 pixels in, logits out, plain Keras
layers only. The repository's modules (data, models, training, ...) live beside
this package; the editable install makes them importable from here.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(ROOT, "models")):
    raise ImportError(f"cifar_repro needs the repository it came from (no models/ beside "
                      f"{ROOT}); install it with `pip install -e <repository>`.")
if ROOT not in sys.path:
    sys.path.append(ROOT)

from models import export, native  # noqa: E402,F401  (registers the layers)
from models import MODELS, build_model  # noqa: E402,F401
from training import losses, optimizers  # noqa: E402,F401  (optimizers, losses, schedules)

__all__ = ["MODELS", "build_model", "ROOT"]
