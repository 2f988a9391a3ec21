#!/usr/bin/env bash
# Build the libFuzzer target with clang and run it for N seconds (default 60) from the seed
# corpus in tests/fuzz/corpus plus every scenario. Any crash, hang (>10 s per input) or
# sanitizer report fails (non-zero exit).
#   tools/fuzz.sh [SECONDS] [SEED]
# SEED (CI passes one) fixes libFuzzer's mutation sequence, so a CI failure reproduces with the
# same command on the same commit; exploratory runs omit it (random seed) and run longer. Every
# crash found either way is fixed and its input added to tests/fuzz/corpus as a regression seed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
seed_args=()
[[ -n "${2:-}" ]] && seed_args=(-seed="$2")
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
for f in scenarios/plans/*.yaml; do
  [[ -f "$f" ]] || continue
  { printf '\004'; cat "$f"; } >"$work/plan_$i"; i=$((i + 1))
done
rc=0
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build-fuzz/tests/fuzz/fuzz_config "$work" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
  -max_len=4096 -print_final_stats=1 "${seed_args[@]}" >build-fuzz/fuzz.log 2>&1 || rc=$?
if ((rc != 0)); then
  # The whole report: the exception or sanitizer message and the top frames come first.
  grep -v '^#[0-9]*	\(NEW\|REDUCE\|pulse\|INITED\|RELOAD\)' build-fuzz/fuzz.log | tail -80
  echo "fuzz: FAILED (exit $rc); reproduce: build-fuzz/tests/fuzz/fuzz_config <crash file>" >&2
  exit "$rc"
fi
tail -8 build-fuzz/fuzz.log
