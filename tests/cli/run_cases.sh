#!/usr/bin/env bash
# Golden CLI cases: each tests/cli/bad/NAME.yaml must fail with exit code 2 and print exactly
# tests/cli/bad/NAME.expected on stderr. An optional NAME.args holds extra arguments.
# Regenerate the expectations (then review the diff!) with: REGEN=1 tests/cli/run_cases.sh BIN
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
fail=0; n=0
for y in tests/cli/bad/*.yaml; do
  base="${y%.yaml}"; n=$((n + 1))
  args=()
  [[ -f "$base.args" ]] && read -r -a args <"$base.args"
  out=$("$bin" validate "$y" "${args[@]}" 2>&1 >/dev/null); rc=$?
  if [[ "${REGEN:-0}" == 1 ]]; then printf '%s\n' "$out" >"$base.expected"; continue; fi
  if [[ $rc -ne 2 ]]; then echo "FAIL $y: exit code $rc, expected 2" >&2; fail=$((fail + 1)); continue; fi
  if ! diff -u "$base.expected" <(printf '%s\n' "$out") >&2; then echo "FAIL $y: stderr differs" >&2; fail=$((fail + 1)); continue; fi
done
# Every scenario shipped in scenarios/ must validate.
for y in scenarios/*.yaml; do
  n=$((n + 1))
  if ! "$bin" validate "$y" >/dev/null 2>&1; then echo "FAIL $y does not validate:" >&2; "$bin" validate "$y" >&2; fail=$((fail + 1)); fi
done
# Usage errors exit 2; --version exits 0.
n=$((n + 3))
"$bin" nosuchcommand >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL unknown subcommand should exit 2" >&2; fail=$((fail + 1)); }
"$bin" run >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL missing argument should exit 2" >&2; fail=$((fail + 1)); }
"$bin" --version | grep -q '^moesim ' || { echo "FAIL --version" >&2; fail=$((fail + 1)); }
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
