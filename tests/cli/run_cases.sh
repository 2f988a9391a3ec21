#!/usr/bin/env bash
# Golden CLI cases. Each tests/cli/bad/NAME.yaml (or NAME.cmd alone) is one case:
#   NAME.cmd       the moesim arguments (default: "validate @FILE@"); @FILE@ is NAME.yaml, @TMP@ a
#                  scratch directory holding fifo (a FIFO with no writer), dir/ (a directory),
#                  fifodir/ (a calibration run whose runs.csv is a FIFO) and lines.csv (a valid
#                  header-only CSV); @CASE@ is tests/cli/bad/NAME (for case directories)
#   NAME.args      extra arguments (appended)
#   NAME.rc        the expected exit code (default 2)
#   NAME.expected  exactly what stderr must say (the scratch path written as @TMP@)
#   NAME.stdout    if present, exactly what stdout must say
#   NAME.stdout_to if present, the file stdout goes to (e.g. /dev/full)
# Regenerate the expectations (then review the diff!) with: REGEN=1 tests/cli/run_cases.sh BIN
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
fail=0; n=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/fifo"; mkdir -p "$tmp/dir" "$tmp/fifodir"; mkfifo "$tmp/fifodir/runs.csv"
printf 'a,b\n' >"$tmp/lines.csv"
for c in tests/cli/bad/*.yaml tests/cli/bad/*.cmd; do
  base="${c%.*}"
  [[ "$c" == *.cmd && -f "$base.yaml" ]] && continue  # counted with its .yaml
  n=$((n + 1))
  cmd="validate @FILE@"
  [[ -f "$base.cmd" ]] && cmd=$(<"$base.cmd")
  [[ -f "$base.args" ]] && cmd="$cmd $(<"$base.args")"
  cmd=${cmd//@FILE@/$base.yaml}; cmd=${cmd//@TMP@/$tmp}; cmd=${cmd//@CASE@/$base}
  want_rc=2
  [[ -f "$base.rc" ]] && want_rc=$(<"$base.rc")
  read -r -a args <<<"$cmd"
  out_to="$tmp/stdout"
  [[ -f "$base.stdout_to" ]] && out_to=$(<"$base.stdout_to")  # e.g. /dev/full
  : >"$tmp/stdout"
  timeout 60 "$bin" "${args[@]}" 2>"$tmp/stderr" >"$out_to"; rc=$?
  err=$(<"$tmp/stderr"); err=${err//$tmp/@TMP@}
  sout=$(<"$tmp/stdout"); sout=${sout//$tmp/@TMP@}
  if [[ "${REGEN:-0}" == 1 ]]; then
    printf '%s\n' "$err" >"$base.expected"
    [[ -f "$base.stdout" ]] && printf '%s\n' "$sout" >"$base.stdout"
    continue
  fi
  if [[ $rc -ne $want_rc ]]; then echo "FAIL $c: exit code $rc, expected $want_rc" >&2; fail=$((fail + 1)); continue; fi
  if ! diff -u "$base.expected" <(printf '%s\n' "$err") >&2; then echo "FAIL $c: stderr differs" >&2; fail=$((fail + 1)); continue; fi
  if [[ -f "$base.stdout" ]] && ! diff -u "$base.stdout" <(printf '%s\n' "$sout") >&2; then
    echo "FAIL $c: stdout differs" >&2; fail=$((fail + 1)); continue
  fi
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
# describe: every kind prints something; one entry by name; unknown kinds/names exit 2 with a hint.
for k in units gpus models fabrics routing "gpu h100-sxm" "model mixtral-8x7b"; do
  n=$((n + 1))
  # shellcheck disable=SC2086
  out=$("$bin" describe $k 2>&1); rc=$?
  [[ $rc -eq 0 && $(printf '%s\n' "$out" | wc -l) -ge 4 ]] || { echo "FAIL describe $k: exit $rc" >&2; fail=$((fail + 1)); }
done
n=$((n + 3))
out=$("$bin" describe model mixtrl-8x7b 2>&1 >/dev/null); rc=$?
[[ $rc -eq 2 && "$out" == *"did you mean 'mixtral-8x7b'"* ]] || { echo "FAIL describe unknown model: $rc $out" >&2; fail=$((fail + 1)); }
"$bin" describe nosuchkind >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL describe unknown kind should exit 2" >&2; fail=$((fail + 1)); }
"$bin" describe fabrics extra >/dev/null 2>&1; [[ $? -eq 2 ]] || { echo "FAIL describe with a stray name should exit 2" >&2; fail=$((fail + 1)); }
# run --json - keeps stdout pure JSON (summary on stderr); -o DIR writes report.json + summary.txt
# with the same report.
n=$((n + 2))
"$bin" run scenarios/all-to-all-2x8-h100.yaml --json - 2>"$tmp/err" >"$tmp/stdout.json" &&
  "$bin" run scenarios/all-to-all-2x8-h100.yaml -o "$tmp/out" >/dev/null
rc=$?
if [[ $rc -ne 0 ]]; then echo "FAIL run --json - / -o: exit $rc" >&2; fail=$((fail + 1)); n=$((n - 1))
else
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/stdout.json" && grep -q '^collective' "$tmp/err" ||
    { echo "FAIL run --json -: stdout is not pure JSON or the summary is missing on stderr" >&2; fail=$((fail + 1)); }
  cmp -s "$tmp/stdout.json" "$tmp/out/report.json" && grep -q '^collective' "$tmp/out/summary.txt" ||
    { echo "FAIL run -o: report.json differs from --json - or summary.txt lacks the summary" >&2; fail=$((fail + 1)); }
fi
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
