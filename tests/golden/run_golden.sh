#!/usr/bin/env bash
# Golden scenario tests: every scenarios/NAME.yaml is run with --json and the report must equal
# tests/golden/NAME.json byte for byte; a second run must give the same bytes (determinism).
# Regenerate after an intended change with: REGEN=1 tests/golden/run_golden.sh BIN
# and review the diff before committing.
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0; n=0
for y in scenarios/*.yaml; do
  name=$(basename "$y" .yaml); n=$((n + 1))
  if ! "$bin" run "$y" --json "$tmp/$name.json" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    echo "FAIL $y: moesim run failed:" >&2; cat "$tmp/$name.err" >&2; fail=$((fail + 1)); continue
  fi
  if ! python3 tests/golden/check_report.py "$tmp/$name.json"; then echo "FAIL $y: report lacks required keys" >&2; fail=$((fail + 1)); continue; fi
  if [[ "${REGEN:-0}" == 1 ]]; then cp "$tmp/$name.json" "tests/golden/$name.json"; continue; fi
  if [[ ! -f "tests/golden/$name.json" ]]; then echo "FAIL $y: no golden tests/golden/$name.json" >&2; fail=$((fail + 1)); continue; fi
  if ! diff -u "tests/golden/$name.json" "$tmp/$name.json" >&2; then echo "FAIL $y: report differs from golden" >&2; fail=$((fail + 1)); continue; fi
  "$bin" run "$y" --json "$tmp/$name.2.json" >/dev/null 2>&1
  if ! cmp -s "$tmp/$name.json" "$tmp/$name.2.json"; then echo "FAIL $y: two runs differ" >&2; fail=$((fail + 1)); fi
done
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
