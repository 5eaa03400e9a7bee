"""Score a trained model on the test set: top-1 and top-5 accuracy, per-class
accuracy and a confusion matrix, written beside the model.

    python experiments/evaluate.py runs/resnet_deep/seed0 [--data-dir ~/cifar]
    python experiments/evaluate.py path/to/model.keras

Prints the scores, and writes evaluation.json and confusion_matrix.png (with its
.json) into the folder of the model.keras it scored, or into --out (a read-only
run folder is scored all the same). Without --data-dir, the local copy the run
recorded is used where it is still there.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def scores(logits, labels, num_classes):
    """Top-1 and top-5 accuracy, per-class accuracy and the confusion matrix
    (rows: true class, columns: predicted)."""
    import numpy as np

    predicted = logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    return {"top1_accuracy": float((predicted == labels).mean()),
            "top5_accuracy": float((top5 == labels[:, None]).any(axis=1).mean()),
            "per_class_accuracy": per_class.tolist(), "confusion_matrix": confusion.tolist()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder (runs/<experiment>/<run-id>) or a model.keras")
    parser.add_argument("--data-dir", help="local CIFAR copy: folder or .tar.gz")
    parser.add_argument("--batch-size", type=int, default=500, help="images per step (default 500)")
    parser.add_argument("--out", help="folder for evaluation.json and the figure (default: "
                                      "beside the model)")
    args = parser.parse_args(argv)
    from experiments.inference import InferenceError, check_path

    try:
        check_path(args.model)
    except InferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from training.machine import import_keras

    import_keras()
    from data.cifar import DataError, load_cifar
    from experiments.inference import load, recorded_data_dir, side_folder
    from plots.style import heatmap
    from training import record

    try:
        trained = load(args.model, args.data_dir)
        data_dir = args.data_dir or recorded_data_dir(trained)
        if data_dir and not args.data_dir:
            print(f"data: {data_dir}, where the run recorded it trained")
        data = load_cifar(trained.dataset, data_dir, trained.label_mode)
    except (InferenceError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, InferenceError) else 1
    print(f"scoring {trained.path} on the {len(data.x_test):,} {trained.dataset} test images")
    logits = trained.model.predict(data.x_test, batch_size=args.batch_size, verbose=0)
    result = scores(logits, data.y_test, data.num_classes)
    names = list(trained.class_names)
    print(f"top-1 {100 * result['top1_accuracy']:.2f}%, top-5 {100 * result['top5_accuracy']:.2f}%")
    worst = sorted(zip(result["per_class_accuracy"], names))[:3]
    print("lowest classes: " + ", ".join(f"{name} {100 * value:.1f}%" for value, name in worst))
    folder = side_folder(os.path.dirname(trained.path), args.out)
    if folder is None:
        print(f"{os.path.dirname(trained.path)} is read-only: evaluation.json was not written; "
              f"pass --out DIR to keep it.")
        return 0
    record.write_json(os.path.join(folder, record.EVALUATION), {
        "model": os.path.abspath(trained.path), "dataset": trained.dataset,
        "label_mode": trained.label_mode, "data_source": data.source, "data_origin": data.origin,
        "test_images": len(data.x_test), "class_names": names, **result})
    heatmap(os.path.join(folder, "confusion_matrix.png"),
            f"{os.path.basename(os.path.dirname(folder)) or 'model'}: confusion matrix "
            f"({len(data.x_test):,} test images)", "predicted class", "true class", names,
            result["confusion_matrix"])
    print(f"wrote {os.path.join(folder, 'evaluation.json')} and confusion_matrix.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
