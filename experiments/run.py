"""Train a paper's experiment (or a group of them) and write its run record.

    python experiments/run.py resnet_deep
    python experiments/run.py resnet_deep --quick --data-dir ~/cifar
    python experiments/run.py --list [--json]
"""

import argparse
import difflib
import json
import os
import sys

# TensorFlow's C++ start-up messages (CUDA probing, CPU features) are noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

USAGE_ERROR = 2
RUN_ERROR = 1
STOPPED = 3  # stopped at --deadline-s, resumable


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Train a CIFAR experiment from one of the five papers.",
        epilog="Data: keras.datasets by default; --data-dir or $CIFAR_DATA_DIR for a local copy.")
    parser.add_argument("name", nargs="?", help="experiment or group name (see --list)")
    parser.add_argument("--list", action="store_true", help="list experiments and groups")
    parser.add_argument("--json", action="store_true", help="with --list: print JSON")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--val-split", type=int,
                        help="hold out N training images (seeded) as validation; 0: the test set")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, order, augmentation")
    parser.add_argument("--data-dir", help="local CIFAR copy: folder or .tar.gz")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "runs"),
                        help="where run records go (default: the repository's runs/)")
    parser.add_argument("--run-id", help="run folder name (default: seed<N>[-quick])")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the recipe, e.g. optimizer.learning_rate=0.05 (repeatable)")
    parser.add_argument("--deterministic", action="store_true",
                        help="op determinism: the same seed gives the same history (slower)")
    parser.add_argument("--distribute", default="none",
                        choices=("none", "mirrored", "multi-worker", "data-parallel"),
                        help="data-parallel training: TensorFlow's MirroredStrategy / "
                             "MultiWorkerMirroredStrategy (TF_CONFIG), or keras.distribution."
                             "DataParallel on JAX; --batch-size stays the global batch")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="mixed precision: bf16 or fp16 compute with float32 variables "
                             "(fast where the hardware has it: GPUs, CPUs with AMX)")
    parser.add_argument("--input-threads", type=int, default=0, metavar="N",
                        help="threads that build training batches ahead of the step (the batches "
                             "are the same for any N): 1 to 8, or 0 (default) for half the cores")
    parser.add_argument("--quick", action="store_true",
                        help="2 epochs on 256 training and 128 validation images: checks an install "
                             "in about a minute; an explicit --epochs or --val-split wins over it")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs (loss, accuracy, lr, epoch seconds) into "
                             "<run>/tensorboard; view with: tensorboard --logdir runs/")
    parser.add_argument("--steps-per-execution", type=int, default=1, metavar="N",
                        help="training steps in one compiled call (default 1); fewer host "
                             "round trips on a GPU, the same steps and rates")
    parser.add_argument("--augment-on", default="auto", choices=("auto", "host", "device"),
                        help="where crop, flip, shift, Cutout, normalisation and mixup run: "
                             "host (NumPy, the reference), device (inside the compiled step), "
                             "auto (default: the device on a GPU where the recipe allows it)")
    parser.add_argument("--deadline-s", type=float, metavar="S",
                        help="start no epoch that would end more than S seconds from now (judged "
                             "by the median epoch); the run stops resumable, exit status 3")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe(s) as JSON and exit (loads no data)")
    return parser.parse_args(argv)


def fail(message, code):
    print(f"error: {message}", file=sys.stderr)
    return code


def _counts_cache_path():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cifar-repro", "parameter_counts.json")


def _model_code_key():
    """A hash of the network code and the Keras version: cached counts hold while both do."""
    import hashlib
    from importlib import metadata

    digest = hashlib.sha256(metadata.version("keras").encode())
    folder = os.path.join(ROOT, "models")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as stream:
                digest.update(name.encode() + stream.read())
    return digest.hexdigest()[:16]


class ParameterCounts:
    """(trainable, non-trainable) per (network, arguments, classes): from the cache
    when the network code is unchanged (the listing then prints at once), else
    counted from the built model (~20 s for all) and cached.
    tests/test_models.py checks the built counts against the papers'."""

    def __init__(self):
        self.path, self.key = _counts_cache_path(), _model_code_key()
        self.counts, self.changed = {}, False
        try:
            with open(self.path) as stream:
                saved = json.load(stream)
            if saved.get("key") == self.key:
                self.counts = saved.get("counts", {})
        except (OSError, ValueError):
            pass

    def __call__(self, recipe, num_classes):
        key = f"{recipe.model} {json.dumps(recipe.model_args, sort_keys=True)} {num_classes}"
        if key not in self.counts:
            import keras

            from models import build_model, count_params

            self.counts[key] = list(count_params(build_model(recipe.model, num_classes,
                                                             **recipe.model_args)))
            keras.backend.clear_session()
            self.changed = True
        return self.counts[key]

    def save(self):
        if not self.changed:
            return
        try:
            from training import record

            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            record.write_json(self.path, {"key": self.key, "counts": self.counts})
        except OSError:
            pass  # a cache only


def listing(as_json):
    from data.cifar import DATASETS
    from experiments.recipes import EXPERIMENTS, GROUPS
    from experiments.searches import SEARCHES

    counts = ParameterCounts()

    def rows():
        for recipe in EXPERIMENTS.values():
            num_classes = DATASETS[recipe.dataset].num_classes[recipe.label_mode]
            trainable, non_trainable = counts(recipe, num_classes)
            yield {"kind": "experiment", "name": recipe.name, "paper": recipe.paper,
                   "model": recipe.model, "model_args": recipe.model_args,
                   "dataset": recipe.dataset, "trainable_params": trainable,
                   "non_trainable_params": non_trainable,
                   "paper_accuracy": recipe.paper_accuracy, "paper_source": recipe.paper_source,
                   "epochs": recipe.epochs, "notes": recipe.notes}

    if as_json:
        # Experiments first, as before; groups and searches follow, told apart by "kind".
        entries = list(rows())
        entries += [{"kind": "group", "name": name, "members": members}
                    for name, members in GROUPS.items()]
        entries += [{"kind": "search", "name": search.name, "base": search.base,
                     "budget": search.budget, "description": search.description}
                    for search in SEARCHES.values()]
        print(json.dumps(entries, indent=2))
        counts.save()
        return 0
    # Each row as soon as its network is counted; the columns are as wide as the
    # longest name, so every row lines up.
    def width(header, field):
        return max(len(header), *(len(getattr(recipe, field)) for recipe in EXPERIMENTS.values()))

    name_width, paper_width = width("experiment", "name"), width("paper", "paper")
    model_width = width("model", "model")
    print(f"{'experiment':<{name_width}} {'paper':<{paper_width}} {'model':<{model_width}} "
          f"{'trainable':>11} {'paper acc':>9}", flush=True)
    for row in rows():
        accuracy = f"{row['paper_accuracy']:.2f}%" if row["paper_accuracy"] is not None else "-"
        print(f"{row['name']:<{name_width}} {row['paper']:<{paper_width}} "
              f"{row['model']:<{model_width}} "
              f"{row['trainable_params']:>11,} {accuracy:>9}", flush=True)
        if row["notes"]:
            print(f"{'':<{name_width}} note: {row['notes']}", flush=True)
    counts.save()
    print("\ngroups:")
    for group, members in GROUPS.items():
        print(f"  {group}: {' -> '.join(members)}")
    print("\nsearches (experiments/tune.py):")
    for search in SEARCHES.values():
        print(f"  {search.name}: on {search.base}; {search.description}")
    return 0


def resolve(args):
    """The recipes to run, with the command line's edits applied."""
    from experiments.recipes import EXPERIMENTS, GROUPS
    from training.recipe import apply_overrides

    if args.name in GROUPS:
        names = GROUPS[args.name]
    elif args.name in EXPERIMENTS:
        names = [args.name]
    else:
        choices = list(EXPERIMENTS) + list(GROUPS)
        close = difflib.get_close_matches(args.name, choices, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LookupError(f"unknown experiment or group {args.name!r}.{hint} "
                          f"'python experiments/run.py --list' shows them all.")
    edits = list(args.set)
    if args.epochs is not None:
        edits.append(f"epochs={args.epochs}")
    if args.batch_size is not None:
        edits.append(f"batch_size={args.batch_size}")
    if args.val_split is not None:
        edits.append(f"val_split={args.val_split}")
    return [apply_overrides(EXPERIMENTS[name], edits) for name in names]


def quick_keeps(args):
    """The recipe fields set explicitly on the command line that --quick keeps as given."""
    named = {assignment.split("=", 1)[0].strip() for assignment in args.set}
    return tuple(field for field, flag in (("epochs", args.epochs), ("val_split", args.val_split))
                 if flag is not None or field in named)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        import signal

        # `--list | head`: a closed pipe ends the listing quietly, as it does any Unix tool.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        from training.machine import import_keras

        import_keras()  # counting parameters builds networks: without TensorFlow's CUDA probing
        return listing(args.json)
    if not args.name:
        return fail("name an experiment or group (see --list).", USAGE_ERROR)

    from training.machine import import_keras

    import_keras()  # without TensorFlow's CUDA probing on the console
    from plots.run_plots import plot_run
    import time

    from training.engine import RunError, RunOptions, RunStopped, run_directory, train
    from training.recipe import RecipeError
    from training.transfer import TransferError
    from data.cifar import DataError

    try:
        recipes = resolve(args)
    except (LookupError, RecipeError) as error:
        return fail(str(error).strip("'\""), USAGE_ERROR)
    try:
        options = RunOptions(output_dir=args.output_dir, run_id=args.run_id, seed=args.seed,
                             deterministic=args.deterministic, distribute=args.distribute,
                             precision=args.precision, input_threads=args.input_threads,
                             data_dir=args.data_dir, quick=args.quick, tensorboard=args.tensorboard,
                             quick_keeps=quick_keeps(args),
                             steps_per_execution=args.steps_per_execution,
                             augment_on=args.augment_on,
                             deadline=(None if args.deadline_s is None
                                       else time.time() + args.deadline_s),
                             verbose=1 if sys.stdout.isatty() else 2)
    except RunError as error:
        return fail(str(error), USAGE_ERROR)
    if args.print_config:
        from training.engine import quick_recipe

        resolved = [quick_recipe(recipe, options.quick_keeps) if args.quick else recipe
                    for recipe in recipes]
        print(json.dumps([recipe.to_dict() for recipe in resolved] if len(resolved) > 1
                         else resolved[0].to_dict(), indent=2))
        return 0
    failed = []
    for index, recipe in enumerate(recipes, 1):
        if len(recipes) > 1:
            print(f"== {args.name}: member {index} of {len(recipes)}: {recipe.name}", flush=True)
        try:
            metrics = train(recipe, options)
            plot_run(run_directory(recipe, options))
        except (DataError, RecipeError) as error:
            return fail(str(error), USAGE_ERROR if isinstance(error, RecipeError) else RUN_ERROR)
        except RunStopped as stopped:
            print(str(stopped), flush=True)
            return STOPPED
        except (RunError, TransferError) as error:
            if len(recipes) == 1:
                return fail(str(error), RUN_ERROR)
            # One network's failure (a NaN loss, say) does not cost a group's later,
            # often days-long, members their night: the rest train and the exit code says.
            print(f"error: {error}", file=sys.stderr, flush=True)
            failed.append(recipe.name)
            continue
        except KeyboardInterrupt:
            return fail("interrupted; rerun the same command to resume.", 130)
        best = metrics.get("best_val_accuracy")
        # Counted from 1, as Keras's progress lines and the plots count epochs
        # (history.csv and metrics.json keep Keras's 0-based index).
        outcome = (f"best validation accuracy {100 * best:.2f}% at epoch {metrics['best_epoch'] + 1}"
                   if best is not None else "finished")
        # The record's folder is named: --output-dir defaults to the repository's
        # runs/, which is not where a user who ran from elsewhere would look.
        print(f"{recipe.name}: {outcome}; run record in {run_directory(recipe, options)}")
    if failed:
        return fail(f"{args.name}: {len(failed)} of {len(recipes)} experiments failed "
                    f"({', '.join(failed)}; the reasons are above and in each run's status.json); "
                    f"the others finished.", RUN_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
