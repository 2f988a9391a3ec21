#!/usr/bin/env bash
# Sweep throughput benchmark (issue 9 target: 1,000 Mixtral-class points on 64 GPUs in under
# 60 s with -j2 on the 2-core machine). Prints wall and CPU seconds of the whole sweep
# (loading + validating 1,000 points, running them, writing results.csv).
# Usage: bench/explore/sweep_bench.sh BUILD/cli/moesim [JOBS=2] [SWEEP=bench/explore/mixtral64-1000.yaml]
set -euo pipefail
bin="$1"
jobs="${2:-2}"
sweep="${3:-$(dirname "$0")/mixtral64-1000.yaml}"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
/usr/bin/time -f "cpu_user_s %U\ncpu_sys_s %S\nmax_rss_kb %M" -o "$out/time" \
  "$bin" sweep "$sweep" -j "$jobs" -o "$out/r" -q
end=$(date +%s.%N)
runs=$(( $(wc -l <"$out/r/results.csv") - 1 ))
echo "sweep $(basename "$sweep" .yaml): $runs runs, -j$jobs"
echo "wall_s $(awk "BEGIN{print $end - $start}")"
cat "$out/time"
echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
