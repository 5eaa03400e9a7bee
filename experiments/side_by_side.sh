#!/usr/bin/env bash
# Train several experiments at once, one process each, every one stopped after LIMIT_S
# seconds: a small network leaves most of a large GPU idle, so several can share it.
# The same call again resumes the unfinished ones from their last epoch.
# Usage: experiments/side_by_side.sh LIMIT_S DATA_DIR OUTPUT_DIR EXPERIMENT[:INPUT_THREADS]... [-- RUN_ARGS...]
# Each run's console goes to OUTPUT_DIR/EXPERIMENT.log; $PYTHON picks the interpreter.
set -u
usage() {
  echo "usage: $0 LIMIT_S DATA_DIR OUTPUT_DIR EXPERIMENT[:INPUT_THREADS]... [-- RUN_ARGS...]" >&2
  echo "  e.g. $0 3600 ~/data/cifar10 ~/runs cnn_vgg3:2 cnn_regularized:4" >&2
  exit 2
}
{ [ $# -ge 4 ] && [[ $1 =~ ^[0-9]+$ ]]; } || usage
limit=$1 data=$2 out=$3
shift 3
runs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do runs+=("$1"); shift; done
[ ${#runs[@]} -gt 0 ] || usage  # experiments come before the --
[ $# -gt 0 ] && shift  # the rest goes to every run.py call
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" || exit 2
pids=()
for item in "${runs[@]}"; do
  name=${item%%:*}
  threads=0
  [ "$item" != "$name" ] && threads=${item#*:}
  timeout -s INT -k 60 "$limit" "${PYTHON:-python3}" "$root/experiments/run.py" "$name" \
    --data-dir "$data" --output-dir "$out" --input-threads "$threads" "$@" \
    >> "$out/$name.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  code=$?
  echo "${runs[$i]%%:*}: exit $code$([ $code = 124 ] && echo " (stopped at ${limit} s; run again to resume)")"
  [ $code = 0 ] || failed=1
done
exit $failed
