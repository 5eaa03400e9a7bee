"""Export a trained model (raw pixels in, logits out) for serving.

    python experiments/export.py runs/resnet_deep/seed0 --format saved_model [--out DIR]
    python experiments/export.py model.keras --format onnx [--out model.onnx]

saved_model: a TensorFlow SavedModel (Keras's `model.export`; needs TensorFlow; on
another backend the export runs in a TensorFlow child process).
onnx: an ONNX file where the backend's exporter is installed (on TensorFlow:
`pip install tf2onnx onnx`); otherwise the message says what to install. The
model.keras itself loads with `keras.saving.load_model` on any backend.
"""

import argparse
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FORMATS = {"saved_model": ("tf_saved_model", "saved_model"), "onnx": ("onnx", "model.onnx")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a run folder or a model.keras (raw pixels in)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--out", help="output path (default: beside the model; in the current "
                                      "folder when the model's folder is read-only)")
    args = parser.parse_args(argv)
    from experiments.inference import InferenceError, check_path, side_folder

    try:
        check_path(args.model)
    except InferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from training.machine import import_keras

    keras = import_keras()
    if args.format == "saved_model" and keras.backend.backend() != "tensorflow":
        # Keras writes SavedModels from TensorFlow only; the model.keras loads there too.
        if importlib.util.find_spec("tensorflow") is None:
            print("error: saved_model export needs TensorFlow (pip install -r "
                  "requirements.txt), or use --format onnx.", file=sys.stderr)
            return 1
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        return subprocess.run([sys.executable, os.path.abspath(__file__),
                               *(argv if argv is not None else sys.argv[1:])], env=env).returncode
    from experiments.inference import load

    try:
        trained = load(args.model)
    except InferenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    keras_format, default_name = FORMATS[args.format]
    out = args.out
    if out is None:
        folder = side_folder(os.path.dirname(trained.path))
        if folder is None:  # a read-only run folder: here, named after the run
            run = os.path.basename(os.path.normpath(trained.run_dir))
            experiment = os.path.basename(os.path.dirname(os.path.normpath(trained.run_dir)))
            folder = os.path.abspath(f"{experiment}-{run}")
            os.makedirs(folder, exist_ok=True)
            print(f"{os.path.dirname(trained.path)} is read-only: writing to {folder} instead "
                  f"(--out names another path)")
        out = os.path.join(folder, default_name)
    import numpy as np

    # The exporters trace a model that has been called once.
    trained.model(np.zeros((1, *trained.model.inputs[0].shape[1:]), np.float32))
    try:
        trained.model.export(out, format=keras_format, verbose=False)
    except ImportError as error:
        print(f"error: {args.format} export is not available here ({error}); install the "
              f"exporter for the {keras.backend.backend()} backend (TensorFlow: pip install "
              f"tf2onnx onnx) or use --format saved_model.", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
