#!/usr/bin/env bash
# Build the libFuzzer target with clang and run it over every input format moesim reads, each for
# SECONDS (default 60) from its seed corpus in tests/fuzz/corpus/<format>/ (plus, for scenario,
# sweep and plan, the shipped files of that kind) with a dictionary (tests/fuzz/yaml.dict:
# anchors, aliases, document markers... for YAML formats; csv.dict for traces and calibration
# CSVs). Any crash, hang (>10 s per input), out-of-memory or sanitizer report fails (non-zero
# exit), after every format has run. A table of inputs executed, coverage edges and crashes per
# format ends the output.
#   tools/fuzz.sh [SECONDS_PER_FORMAT] [SEED] [FORMAT...]
# SEED (CI passes one) fixes libFuzzer's mutation sequence, so a CI failure reproduces with the
# same command on the same commit; exploratory runs pass "" (random seed) and run longer. Every
# crash found either way is fixed and its input added to tests/fuzz/corpus/<format>/ as a
# regression seed. Reproduce one input: MOESIM_FUZZ_FORMAT=<format> build-fuzz/tests/fuzz/fuzz_config FILE
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
seed="${2:-}"
seed_args=()
[[ -n "$seed" ]] && seed_args=(-seed="$seed")
shift $(($# < 2 ? $# : 2))
formats=("$@")
((${#formats[@]})) || formats=(units scenario set sweep plan trace csv profile)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DMOESIM_FUZZ=ON \
      -DMOESIM_BUILD_TESTS=OFF -DMOESIM_BUILD_BENCH=OFF -DMOESIM_WITH_CUDA=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_config
rm -rf build-fuzz/work-* build-fuzz/corpus build-fuzz/artifacts
mkdir -p build-fuzz/artifacts
status=0
summary=()
total_execs=0
for fmt in "${formats[@]}"; do
  work="build-fuzz/corpus/$fmt"
  mkdir -p "$work"
  cp tests/fuzz/corpus/"$fmt"/* "$work"/ 2>/dev/null || true
  shipped=()
  case "$fmt" in
    scenario | set) shipped=(scenarios/*.yaml) ;;
    sweep) shipped=(scenarios/sweeps/*.yaml) ;;
    plan) shipped=(scenarios/plans/*.yaml) ;;
  esac
  i=0
  for f in "${shipped[@]}"; do
    [[ -f "$f" ]] || continue
    if [[ "$fmt" == set ]]; then { echo "routing.alpha=0.5"; cat "$f"; } >"$work/shipped_$i"; else cp "$f" "$work/shipped_$i"; fi
    i=$((i + 1))
  done
  dict=tests/fuzz/yaml.dict max_len=4096
  case "$fmt" in trace | csv) dict=tests/fuzz/csv.dict max_len=8192 ;; units) max_len=256 ;; esac
  log="build-fuzz/fuzz-$fmt.log"
  rc=0
  MOESIM_FUZZ_FORMAT="$fmt" ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    build-fuzz/tests/fuzz/fuzz_config "$work" -dict="$dict" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
    -max_len="$max_len" -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$fmt-" "${seed_args[@]}" \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')
  crashes=$(find build-fuzz/artifacts -name "$fmt-*" | wc -l)
  total_execs=$((total_execs + ${execs:-0}))
  summary+=("$(printf '%-9s %10s %8s %8s' "$fmt" "${execs:-?}" "${cov:-?}" "$crashes")")
  if ((rc != 0)); then
    # The whole report: the exception or sanitizer message and the top frames come first.
    grep -v '^#[0-9]*	\(NEW\|REDUCE\|pulse\|INITED\|RELOAD\)' "$log" | tail -80
    echo "fuzz: $fmt FAILED (exit $rc); reproduce: MOESIM_FUZZ_FORMAT=$fmt build-fuzz/tests/fuzz/fuzz_config build-fuzz/artifacts/$fmt-*" >&2
    status=$rc
  fi
done
rm -rf build-fuzz/work-*
echo "fuzz: ${secs} s per format, seed ${seed:-random}"
printf '%-9s %10s %8s %8s\n' format executed "cov" crashes
printf '%s\n' "${summary[@]}"
echo "total executed: $total_execs"
exit "$status"
