"""Throughput of each recipe's augmentation chain, and the input share of `fit`.

    python benchmarks/augment.py [--json OUT] [--seconds S] [--no-fit]

Each chain runs on uint8 batches of 128 random images in this process, single
threaded, as `CifarBatches` calls it (augmentation, normalisation, mixup where
the recipe has it). Then, per network, a short `fit` with the recipe's real
pipeline measures the share of step time spent building input batches (an
upper bound on the time the accelerator waits: Keras may prepare batches while
the previous step runs). Writes JSON and a markdown table into reports/.
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tables import markdown_table, write_report  # noqa: E402

import numpy as np  # noqa: E402

from data.augment import Augmenter  # noqa: E402
from experiments.recipes import EXPERIMENTS  # noqa: E402

BATCH = 128
# (chain name, experiment whose recipe defines it, target images/s)
CHAINS = [
    ("crop+flip (000, He)", "mobilenetv2", 20000),
    ("AutoAugment (001 row 6)", "resnet5m_row6", 2000),
    ("jitter+rotate+translate (002)", "modified_resnet", 5000),
    ("grayscale+autocontrast+mixup (003)", "se_resnet_mixup", 5000),
    ("shift+flip (004)", "resnet_deep", None),
    ("shift+flip+cutout (004 noisy)", "noisy_labels", None),
]
# (network, experiment) for the input share during fit
FIT_CASES = [("resnet20", "resnet20"), ("modified_resnet", "modified_resnet")]


def chain_step(recipe):
    """One training batch's input work, as CifarBatches does it."""
    augment = Augmenter(recipe.augment)
    normalizer = recipe.normalization.build()
    mixer = recipe.mixup
    rng = np.random.default_rng(0)
    sample = rng.integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8)
    normalizer.fit(sample)
    before = normalizer.stage == "before"
    images = normalizer(sample) if before else sample
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(sample))]

    def step(index):
        picked = rng.integers(0, len(images), BATCH)
        x = augment(images[picked], np.random.default_rng([0, 0, 1, index]))
        x = x if before else normalizer(x)
        if mixer:
            x, _ = mixer(x, labels[picked], 0, 0, index)
        return x

    return step


def images_per_second(step, seconds):
    step(0)
    count, start, index = 0, time.perf_counter(), 1
    while time.perf_counter() - start < seconds:
        step(index)
        index += 1
        count += BATCH
    return count / (time.perf_counter() - start)


def fit_input_share(experiment, images=640):
    """Second-epoch input seconds / epoch seconds of a short fit with the recipe's
    pipeline, network, optimizer and loss (synthetic data)."""
    import keras

    from callbacks import EpochLog
    from callbacks import EpochSync
    from data.pipeline import CifarBatches
    from models import build_model

    recipe = EXPERIMENTS[experiment]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)
    normalizer = recipe.normalization.build().fit(x)
    before = normalizer.stage == "before"
    batches = CifarBatches(normalizer(x) if before else x, y, 10, BATCH,
                           augment=Augmenter(recipe.augment),
                           normalize=None if before else normalizer,
                           mix=recipe.mixup, shuffle=True)
    model = build_model(recipe.model, 10, **recipe.model_args)
    model.compile(optimizer=recipe.optimizer.build(),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(batches, epochs=2, callbacks=[EpochSync(batches), EpochLog()],
                        shuffle=False, verbose=0).history
    return {"input_seconds": history["input_seconds"][1], "epoch_seconds": history["seconds"][1],
            "input_share": history["input_seconds"][1] / history["seconds"][1],
            "train_images_per_second": images / history["seconds"][1]}


def machine():
    import PIL

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "pillow": PIL.__version__}


def table(result):
    lines = ["# Augmentation throughput", "",
             f"{result['machine']['cpu_count']} CPU cores, {result['machine']['platform']}; "
             f"batch {BATCH}, one thread; {result['date']}.", "",
             ]
    rows = []
    for chain in result["chains"]:
        target = chain["target_images_per_second"]
        met = "-" if target is None else ("yes" if chain["met"] else "**no**")
        rows.append([chain["name"], chain["experiment"], f"{chain['images_per_second']:,.0f}",
                     "-" if target is None else f"{target:,}", met])
    lines += markdown_table(["chain", "experiment", "images/s", "target", "met"], rows, "llrrl")
    if result.get("fit"):
        lines += ["", "## Input share of a training step (target < 5%)", "",
                  f"Backend {result['backend']}; second epoch of {640} synthetic images.", ""]
        lines += markdown_table(
            ["network", "input s", "epoch s", "input share", "train images/s"],
            [[case["network"], f"{case['input_seconds']:.2f}", f"{case['epoch_seconds']:.1f}",
              f"{100 * case['input_share']:.2f}%", f"{case['train_images_per_second']:.0f}"]
             for case in result["fit"]], "lrrrr")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(ROOT, "reports", "augment_benchmark.json"))
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per chain")
    parser.add_argument("--no-fit", action="store_true", help="skip the input-share fits")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0; got {args.seconds}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "batch": BATCH,
              "chains": []}
    for name, experiment, target in CHAINS:
        speed = images_per_second(chain_step(EXPERIMENTS[experiment]), args.seconds)
        result["chains"].append({"name": name, "experiment": experiment,
                                 "images_per_second": speed, "target_images_per_second": target,
                                 "met": None if target is None else speed >= target})
        print(f"{name:40s} {speed:10,.0f} images/s", flush=True)
    if not args.no_fit:
        import keras

        result["backend"] = keras.backend.backend()
        result["fit"] = []
        for network, experiment in FIT_CASES:
            case = {"network": network, "experiment": experiment, **fit_input_share(experiment)}
            result["fit"].append(case)
            print(f"{network:40s} input share {100 * case['input_share']:.2f}%", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_report(args.json, result, table)
    print(f"wrote {args.json} and its .md table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
