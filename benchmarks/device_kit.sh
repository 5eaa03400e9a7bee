#!/usr/bin/env bash
# Stages here what a lent GPU machine lacks, in the two ignored folders that the
# device tool's `carry` sends along with the working tree (about 25 MB together):
#   .whl/    Keras, KerasTuner and the dependencies the machine's image does not hold,
#            as wheels for its Python 3.12 (benchmarks/gpu_slice.sh installs them there)
#   .cifar/  the shared JPEG copy of CIFAR-10 and the tool that rebuilds it
# Then one device call runs the slice:
#   run(command="bash benchmarks/gpu_slice.sh $OUT 540", carry=[".whl", ".cifar"])
# Usage: benchmarks/device_kit.sh      Environment: KIT_DIR (default: the repository
#   root), SHARED (default: ../shared beside it), PYTHON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${KIT_DIR:-$root}
shared=${SHARED:-$root/../shared}
py=${PYTHON:-python3}
# The versions requirements.txt pins; the machine's image has the rest (KINDS.md).
pinned() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$root/requirements.txt"; }
wheels=("keras==$(pinned keras)" "keras-tuner==$(pinned keras-tuner)" namex optree kt-legacy)
for file in data/cifar10-jpeg.tar.gz tools/cifar10_from_jpeg.py; do
  [ -f "$shared/$file" ] || { echo "no $shared/$file: pass SHARED=<the shared folder>" >&2; exit 2; }
done
mkdir -p "$kit/.whl" "$kit/.cifar"
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --dest "$kit/.whl" "${wheels[@]}"
cp "$shared/data/cifar10-jpeg.tar.gz" "$shared/tools/cifar10_from_jpeg.py" "$kit/.cifar/"
ls "$kit/.whl" "$kit/.cifar"
du -sh "$kit/.whl" "$kit/.cifar"
