"""Classify image files with a trained model: the top classes and their probabilities.

    python experiments/predict.py runs/resnet_deep/seed0 cat.jpg truck.png
    python experiments/predict.py model.keras photo.jpg --top 3

Any size of PNG or JPEG (any format Pillow reads): the image is converted to RGB,
its centre square is cut out (the shorter side), and that square is resized to
32x32 with Pillow's Lanczos filter, which averages, as the CIFAR images were made
by downscaling larger photos. Each line says what was done to its image. A file
Pillow cannot read is named and skipped; the others are scored, and the exit
status is then 1.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def to_cifar(path, size=32):
    """(the image at `path` as a (size, size, 3) uint8 array, as the docstring says;
    the changes made to it, in words)."""
    import numpy as np
    from PIL import Image

    changes = []
    with Image.open(path) as image:
        if image.mode != "RGB":
            changes.append(f"converted from {image.mode} to RGB")
        image = image.convert("RGB")
        width, height = image.size
        side = min(width, height)
        if width != height:
            changes.append(f"cropped from {width}x{height} to its centre {side}x{side}")
        if side != size:
            changes.append(f"resized from {side}x{side} to {size}x{size}")
        left, top = (width - side) // 2, (height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), np.uint8), changes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder or a model.keras (raw pixels in)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top", type=int, default=5, help="classes to list (default 5)")
    args = parser.parse_args(argv)
    from PIL import UnidentifiedImageError

    from experiments.inference import InferenceError, check_path

    try:
        check_path(args.model)
    except InferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths, images, changes, unreadable = [], [], [], []
    for path in args.images:
        try:
            image, changed = to_cifar(path)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            print(f"error: {path} is not an image Pillow can read ({error}); skipped.",
                  file=sys.stderr)
            unreadable.append(path)
            continue
        paths.append(path)
        images.append(image)
        changes.append(changed)
    if not images:
        return 2
    from training.machine import import_keras

    import_keras()
    import numpy as np

    from experiments.inference import load

    try:
        trained = load(args.model)
    except InferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logits = trained.model.predict(np.stack(images), verbose=0).astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    names = trained.class_names
    for path, row, changed in zip(paths, probabilities, changes):
        best = np.argsort(-row)[:max(1, args.top)]
        print(f"{path}: " + ", ".join(f"{names[i]} {100 * row[i]:.1f}%" for i in best)
              + (f" ({'; '.join(changed)})" if changed else ""))
    if unreadable:
        print(f"error: {len(unreadable)} of {len(args.images)} files were not images: "
              f"{', '.join(unreadable)}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
