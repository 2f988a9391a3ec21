#!/usr/bin/env bash
# Builds validation_kernels standalone on the GPU machine and runs the sweep into
# validation_kernels/measurements/<gpu>/<run_id>/ (and $OUT when set, so the files come back).
# Designed for one 10-minute device command: build (-j16, ~2 min) + sweep (--time-budget-s).
#   usage: validation_kernels/run_on_gpu.sh [--quick|--full] [extra vk_harness flags]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
grid="${1:---quick}"
[[ $# -gt 0 ]] && shift
build="${VK_BUILD_DIR:-$here/../build-vk}"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j16 --target vk_harness
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv || true
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' || echo unknown)"
run_id="$(date -u +%Y%m%dT%H%M%SZ)"
out="$here/measurements/${gpu:-unknown}/$run_id"
budget=90
[[ "$grid" == "--full" ]] && budget=420
"$build/vk_harness" "$grid" --heldout 100 --out "$out" --run-id "$run_id" --time-budget-s "$budget" "$@"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/measurements/${gpu:-unknown}"
  cp -r "$out" "$OUT/measurements/${gpu:-unknown}/"
fi
echo "results: $out"
