#!/usr/bin/env bash
# One GPU slice, run as is: check the machine, measure what the plan lacks, train
# the campaign queue until the deadline, and leave at most 8 files in OUT.
# Usage: benchmarks/gpu_slice.sh OUT [BUDGET_S]      (BUDGET_S: default 540, one command)
# The same call again on the same machine (the slice's second command) resumes every
# unfinished run from its backup in RUNS; a fresh machine starts them over.
# Before a device call: benchmarks/device_kit.sh here stages .whl/ and .cifar/ to carry.
# Environment: DATA_DIR (a CIFAR-10 copy; default: built from the JPEG copy in .cifar/),
#   RUNS (run folders; default ~/slice-runs), QUEUE (comma-separated; default the
#   campaign's), TIMES (measured epochs; default reports/epochs_gpu_h100.json),
#   MEASURE (experiments to time first; default the first two unmeasured in the queue;
#   empty: none), PROFILE (the recipe whose step is profiled on both augmentation paths;
#   default resnet_deep; empty: none), PROFILE_ARGS (default --steps 50),
#   RUN_ARGS (extra run.py arguments, e.g. --quick for a dry run), PYTHON.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT [BUDGET_S]" >&2; exit 2; }
out=$1 budget=${2:-540}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
runs=${RUNS:-$HOME/slice-runs}
times=${TIMES:-$root/reports/epochs_gpu_h100.json}
start=$(date +%s)
mkdir -p "$out" "$runs"
out=$(cd "$out" && pwd)
cd "$root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KERAS_BACKEND=${KERAS_BACKEND:-jax}  # the lent machines have JAX and PyTorch, no TensorFlow

# 0. What the lent machine's image lacks (Keras, KerasTuner), from the wheels that
#    benchmarks/device_kit.sh staged in .whl/ and the device call carried.
if ! "$py" -c "import keras, keras_tuner" 2>/dev/null; then
  compgen -G "$root/.whl/*.whl" >/dev/null || {
    echo "Keras is not installed and no .whl/ came along: run benchmarks/device_kit.sh" \
         "here, then carry .whl and .cifar in the device call" >&2; exit 2; }
  "$py" -m pip install --quiet --no-index --no-deps "$root"/.whl/*.whl
fi

# 1. The machine: backend, device, versions, data.
{
  echo "date: $(date -u +%FT%TZ)"
  "$py" - <<'EOF'
import keras
from training.machine import device_description, versions
print("backend:", keras.backend.backend())
print("device:", device_description())
print("versions:", versions())
EOF
} > "$out/environment.txt" 2>&1 || { cat "$out/environment.txt" >&2; exit 1; }
if [ -z "${DATA_DIR:-}" ]; then
  # The JPEG copy and its tool: carried in .cifar/ (device_kit.sh), else ../shared here.
  jpeg=$root/.cifar/cifar10-jpeg.tar.gz tool=$root/.cifar/cifar10_from_jpeg.py
  [ -f "$jpeg" ] || jpeg=$root/../shared/data/cifar10-jpeg.tar.gz tool=$root/../shared/tools/cifar10_from_jpeg.py
  [ -f "$jpeg" ] && [ -f "$tool" ] || {
    echo "no DATA_DIR, no .cifar/ and no ../shared: pass DATA_DIR=<CIFAR-10 copy>, or run" \
         "benchmarks/device_kit.sh and carry .cifar" >&2; exit 2; }
  DATA_DIR=$HOME/slice-data
  [ -d "$DATA_DIR/cifar-10-batches-py" ] || "$py" "$tool" "$DATA_DIR" --jpeg-tar "$jpeg" >/dev/null
  echo "data: CIFAR-10 rebuilt from the JPEG copy (quality ~75)" >> "$out/environment.txt"
fi
echo "data dir: $DATA_DIR" >> "$out/environment.txt"
cat "$out/environment.txt"

# 2. Where a step's time goes, on the host and the device augmentation paths.
profile=${PROFILE-resnet_deep}
if [ -n "$profile" ]; then
  # shellcheck disable=SC2086
  "$py" benchmarks/step_profile.py "$profile" --data-dir "$DATA_DIR" ${PROFILE_ARGS:---steps 50} \
    --json "$out/step_profile.json" || echo "step profile failed; the campaign goes on" >&2
fi

# 3. Time the first queued recipes the plan has no epochs for (two epochs each).
measure=${MEASURE-$("$py" - "$times" "${QUEUE:-}" <<'EOF'
import json, sys
from experiments.campaign import QUEUE, measured
table = measured(json.load(open(sys.argv[1])))
queue = sys.argv[2].split(",") if sys.argv[2] else QUEUE
print(" ".join([name for name in queue if name not in table][:2]))
EOF
)}
merged=$out/epochs_slice.json
cp "$times" "$merged"
if [ -n "$measure" ]; then
  # shellcheck disable=SC2086
  "$py" benchmarks/epochs.py --models $measure --input-threads 8 --epochs 2 --data-dir "$DATA_DIR" \
    --data-note "CIFAR-10 as in environment.txt; timing only" --json "$work/measured.json" || true
  "$py" - "$merged" "$work/measured.json" <<'EOF'
import json, os, sys
merged, measured = sys.argv[1], sys.argv[2]
table = json.load(open(merged))
if os.path.exists(measured):
    table["cases"] = table.get("cases", []) + json.load(open(measured))["cases"]
json.dump(table, open(merged, "w"), indent=1)
EOF
fi

# 4. The campaign until the deadline, from the measured plan.
left=$(( budget - ($(date +%s) - start) - 30 ))
"$py" experiments/campaign.py --plan "$left" --times "$merged" ${QUEUE:+--queue "$QUEUE"} > "$out/plan.md"
code=0
"$py" experiments/campaign.py --budget-s "$left" --times "$merged" ${QUEUE:+--queue "$QUEUE"} \
  --data-dir "$DATA_DIR" --output-dir "$runs" --results "$work/results" --report "$work/report" \
  -- ${RUN_ARGS:-} || code=$?
cp "$runs/campaign.md" "$runs/campaign.json" "$out/"

# 5. Records (no weights) and the logs, in one tarball.
mkdir -p "$work/results" "$work/logs"
cp "$runs"/*.log "$work/logs/" 2>/dev/null || true
tar -czf "$out/records.tar.gz" -C "$work" results logs $( [ -d "$work/report" ] && echo report )
echo "slice done in $(( $(date +%s) - start )) s; $(ls "$out" | wc -l) files in $out"
exit $code
