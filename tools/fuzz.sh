#!/usr/bin/env bash
# Build the libFuzzer target with clang and run it for N seconds (default 60) from the seed
# corpus in tests/fuzz/corpus plus every scenario. Any crash, hang (>10 s per input) or
# sanitizer report fails (non-zero exit).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DMOESIM_FUZZ=ON \
      -DMOESIM_BUILD_TESTS=OFF -DMOESIM_BUILD_BENCH=OFF -DMOESIM_WITH_CUDA=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_config
work=build-fuzz/corpus
rm -rf "$work"; mkdir -p "$work"
cp tests/fuzz/corpus/* "$work"/ 2>/dev/null || true
i=0
for f in scenarios/*.yaml; do
  [[ -f "$f" ]] || continue
  { printf '\001'; cat "$f"; } >"$work/scenario_$i"; i=$((i + 1))
done
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build-fuzz/tests/fuzz/fuzz_config "$work" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
  -max_len=4096 -print_final_stats=1 2>&1 | tail -25
