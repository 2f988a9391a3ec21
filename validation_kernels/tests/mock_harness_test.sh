#!/usr/bin/env bash
# vk_harness end to end on the CPU mock (tests/mock_cuda.cpp): the runner, device layer, checks,
# self-test, CSVs, budget loop, watchdog and invalidation run for real; only the "GPU" is fake.
#   usage: mock_harness_test.sh path/to/vk_harness_mock [path/to/moesim]
set -uo pipefail
harness="$1"
moesim="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() {
  local what="$1"
  shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; fi
}
fast=(--tiny --iters 3 --warmup 1 --batch 2 --batch-repeats 2)
# col FILE NAME: values of a column by header name (fields before `notes` hold no commas).
col() { awk -F, -v n="$2" 'NR==1 { for (i = 1; i <= NF; ++i) if ($i == n) c = i; next } { print $c }' "$1"; }
count() { col "$1" "$2" | grep -c -x -- "$3"; }

# 1. A clean run.
"$harness" "${fast[@]}" --out "$work/a" --run-id clean --skip-file "$work/a.skip" > "$work/a.log" 2>&1
check "clean: exit 0" test $? -eq 0
check "clean: every self-test case passed" test "$(col "$work/a/selftest.csv" status | grep -v -c -x ok)" -eq 0
check "clean: self-test covered every GEMM impl (10)" test "$(col "$work/a/selftest.csv" impl | sort -u | wc -l)" -eq 10
check "clean: measurements only ok (or skipped)" test "$(col "$work/a/measurements.csv" status | grep -v -c -x -e ok -e skipped)" -eq 0
check "clean: every family measured" test "$(col "$work/a/measurements.csv" kernel_family | sort -u | wc -l)" -eq 7
check "clean: run_status complete" test "$(col "$work/a/runs.csv" run_status)" = complete
check "clean: no 'nan' in any CSV" test -z "$(grep -il nan "$work/a/"*.csv)"
check "clean: the no-NVML clock probe gave clocks" test "$(col "$work/a/measurements.csv" sm_clock_mhz_before | grep -v '^$' | sort -u | tr '\n' ' ')" = "1755 "
check "clean: no clock-drift flags" test "$(count "$work/a/measurements.csv" clock_drift_flag 1)" -eq 0
check "clean: nothing disabled" test ! -s "$work/a.skip"
gemm_ids="$(awk -F, 'NR==1 { for (i = 1; i <= NF; ++i) { if ($i == "config_id") c = i; if ($i == "kernel_family") f = i } next } $f ~ /gemm/ { print $c }' "$work/a/measurements.csv" | sort -u)"
check "clean: every GEMM config has a counts.csv row" test -z "$(comm -23 <(echo "$gemm_ids") <(col "$work/a/counts.csv" config_id | sort -u))"

# 2. A wgmma kernel whose second consumer warpgroup is broken: its self-test fails, it is never timed.
VK_MOCK_WRONG=grouped_gemm_wgmma "$harness" "${fast[@]}" --family grouped_gemm --out "$work/b" --run-id wrong \
  --skip-file "$work/b.skip" > "$work/b.log" 2>&1
check "self-test failure: exit 0 (the run goes on without it)" test $? -eq 0
check "self-test failure: vk_wgmma failed small_tails" grep -q "vk_wgmma,.*small_tails.*,failed," "$work/b/selftest.csv"
check "self-test failure: vk_mma_sync still passes" test "$(grep "vk_mma_sync," "$work/b/selftest.csv" | grep -c ",ok,")" -ge 2
check "self-test failure: no vk_wgmma rows measured" test "$(count "$work/b/measurements.csv" impl vk_wgmma)" -eq 0
check "self-test failure: vk_mma_sync measured" test "$(count "$work/b/measurements.csv" impl vk_mma_sync)" -ge 3
check "self-test failure: skip file names vk_wgmma" grep -q -x vk_wgmma "$work/b.skip"

# 3. The same fault without the self-test: the grid's check catches it and invalidates earlier rows.
VK_MOCK_WRONG=grouped_gemm_wgmma "$harness" "${fast[@]}" --family grouped_gemm --no-selftest --out "$work/c" \
  --run-id wrong2 --seed 3 > "$work/c.log" 2>&1
check "check failure: exit 0" test $? -eq 0
check "check failure: a failed_check row" test "$(grep ",vk_wgmma," "$work/c/measurements.csv" | grep -c ",failed_check,")" -eq 1
check "check failure: no ok vk_wgmma rows remain" test "$(grep ",vk_wgmma," "$work/c/measurements.csv" | grep -c ",ok,")" -eq 0
check "check failure: disabled_impls in runs.csv" grep -q "vk_wgmma: failed the reference check" "$work/c/runs.csv"

# 4. A kernel that never finishes: the watchdog writes an error row and runs.csv, exits 3.
start=$(date +%s)
VK_MOCK_HANG=grouped_gemm_mma "$harness" "${fast[@]}" --watchdog-s 1 --out "$work/d" --run-id hang \
  --skip-file "$work/d.skip" > "$work/d.log" 2>&1
rc=$?
check "hang: exit 3" test $rc -eq 3
check "hang: within seconds" test $(( $(date +%s) - start )) -lt 60
check "hang: runs.csv says hang" test "$(col "$work/d/runs.csv" run_status)" = hang
check "hang: the self-test row records it" grep -q "vk_mma_sync,.*,hang,.*watchdog" "$work/d/selftest.csv"
check "hang: skip file names vk_mma_sync" grep -q -x vk_mma_sync "$work/d.skip"
# ... and the rerun without it completes.
"$harness" "${fast[@]}" --family grouped_gemm --out "$work/d" --run-id hang2 --skip-impl vk_mma_sync \
  > "$work/d2.log" 2>&1
check "hang rerun: exit 0 and appended to the same files" test $? -eq 0 -a "$(col "$work/d/runs.csv" run_id | tr '\n' ' ')" = "hang hang2 "

# 5. A device fault during routing: fatal too (the context would be lost).
VK_MOCK_FAULT=gate_topk "$harness" "${fast[@]}" --family routing --no-selftest --out "$work/e" --run-id fault \
  > "$work/e.log" 2>&1
check "device fault: exit 3" test $? -eq 3
check "device fault: runs.csv says device_error" test "$(col "$work/e/runs.csv" run_status)" = device_error
check "device fault: error row names the failure" grep -q "illegal memory access" "$work/e/measurements.csv"

# 6. A budget too small for the grid: information order, clean stop, exit 0.
"$harness" "${fast[@]}" --budget 8 --out "$work/f" --run-id budget > "$work/f.log" 2>&1
check "budget: exit 0" test $? -eq 0
check "budget: budget_exhausted" test "$(col "$work/f/runs.csv" run_status)" = budget_exhausted
check "budget: stopped early" test "$(col "$work/f/runs.csv" configs_done)" -lt "$(col "$work/f/runs.csv" configs_planned)"
check "budget: within budget + one configuration" test "$(col "$work/f/runs.csv" wall_s | cut -d. -f1)" -lt 30

# 7. moesim calibrate reads what the harness wrote (three runs in one folder, empty fields).
if [[ -n "$moesim" ]]; then
  for i in 1 2; do
    "$harness" "${fast[@]}" --family routing --family elementwise --no-selftest --seed $((i + 10)) --out "$work/a" \
      --run-id "more$i" > /dev/null 2>&1
  done
  "$moesim" calibrate "$work/a" -o "$work/profile.yaml" > "$work/cal.txt" 2>&1
  rc=$?
  check "calibrate: accepts the harness's files (exit 0)" test $rc -eq 0
  check "calibrate: GPU taken from runs.csv" grep -q "h100-sxm" "$work/cal.txt"
  check "calibrate: routing fitted" grep -q "^routing/gate_topk" "$work/cal.txt"
  check "calibrate: profile written" test -s "$work/profile.yaml"
  [[ $rc -ne 0 ]] && tail -20 "$work/cal.txt"
fi

if (( fail )); then
  for f in "$work"/*.log; do echo "--- $f"; tail -15 "$f"; done
fi
exit $fail
