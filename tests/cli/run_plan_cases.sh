#!/usr/bin/env bash
# Golden CLI cases for `moesim plan`: each tests/cli/plan_bad/NAME.yaml must fail with exit code
# 2 and print exactly tests/cli/plan_bad/NAME.expected on stderr (nothing is simulated).
# Regenerate (then review the diff!) with: REGEN=1 tests/cli/run_plan_cases.sh BIN
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
fail=0; n=0
for y in tests/cli/plan_bad/*.yaml; do
  base="${y%.yaml}"; n=$((n + 1))
  out=$("$bin" plan "$y" -q 2>&1 >/dev/null); rc=$?
  if [[ "${REGEN:-0}" == 1 ]]; then printf '%s\n' "$out" >"$base.expected"; continue; fi
  if [[ $rc -ne 2 ]]; then echo "FAIL $y: exit code $rc, expected 2" >&2; fail=$((fail + 1)); continue; fi
  if ! diff -u "$base.expected" <(printf '%s\n' "$out") >&2; then echo "FAIL $y: stderr differs" >&2; fail=$((fail + 1)); fi
done
# Usage errors exit 2.
n=$((n + 2))
"$bin" plan >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL plan without a file should exit 2" >&2; fail=$((fail + 1)); }
"$bin" plan scenarios/plans/mixtral-8x7b-train.yaml -j 0 >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL -j 0 should exit 2" >&2; fail=$((fail + 1)); }
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
