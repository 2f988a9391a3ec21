#!/usr/bin/env bash
# CLI tests of `moesim sweep` (and `moesim plot` when matplotlib is installed):
#  - each tests/cli/sweep/bad_NAME.yaml fails with exit code 2 before any run, printing exactly
#    bad_NAME.expected on stderr (bad_NAME.args: extra arguments); regenerate with REGEN=1
#  - results.csv is byte-identical for -j1, -j2 and -j3
#  - --resume after cutting results.csv mid-row gives the same bytes; a complete sweep resumes
#    to itself; an existing directory needs --resume or --force; another sweep cannot resume it
#  - runs that fail while simulating are rows with status=error and the sweep exits 3
#  - every scenarios/sweeps/*.yaml runs at the reduced size its "# ci:" line gives
# Usage: tests/cli/sweep_cases.sh BIN [--examples]   (examples take a minute; CI passes it)
set -uo pipefail
bin="$1"
examples="${2:-}"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0; n=0
bad() { echo "FAIL $*" >&2; fail=$((fail + 1)); }

for y in tests/cli/sweep/bad_*.yaml; do
  base="${y%.yaml}"; n=$((n + 1))
  args=()
  [[ -f "$base.args" ]] && read -r -a args <"$base.args"
  out=$("$bin" sweep "$y" -o "$tmp/bad" -q "${args[@]}" 2>&1 >/dev/null); rc=$?
  if [[ "${REGEN:-0}" == 1 ]]; then printf '%s\n' "$out" >"$base.expected"; continue; fi
  [[ $rc -eq 2 ]] || { bad "$y: exit code $rc, expected 2"; continue; }
  [[ ! -e "$tmp/bad" ]] || { bad "$y: wrote $tmp/bad before failing"; rm -rf "$tmp/bad"; continue; }
  diff -u "$base.expected" <(printf '%s\n' "$out") >&2 || bad "$y: stderr differs"
done

# -j1 / -j2 / -j3 give the same bytes; the manifest says the sweep is complete.
small=tests/cli/sweep/small.yaml
for j in 1 2 3; do
  n=$((n + 1))
  "$bin" sweep "$small" -j "$j" -o "$tmp/j$j" -q || bad "sweep -j$j failed"
done
n=$((n + 1))
cmp "$tmp/j1/results.csv" "$tmp/j2/results.csv" && cmp "$tmp/j1/results.csv" "$tmp/j3/results.csv" ||
  bad "results.csv differs between -j1, -j2 and -j3"
[[ $(wc -l <"$tmp/j1/results.csv") -eq 11 ]] || bad "small sweep: expected a header and 10 rows"
head -1 "$tmp/j1/results.csv" | grep -q '^run_index,seed,status,repeat,routing.capacity_factor,routing.alpha,drop_fraction,' ||
  bad "small sweep: unexpected header: $(head -1 "$tmp/j1/results.csv")"
grep -q '"complete": true' "$tmp/j1/manifest.json" || bad "manifest.json does not say complete"
[[ ! -e "$tmp/j1/journal.csv" ]] || bad "journal.csv left behind by a complete sweep"

# Resume after a kill mid-row: cut results.csv inside its 5th row.
n=$((n + 1))
cp -r "$tmp/j1" "$tmp/r"
cut_at=$(( $(head -5 "$tmp/j1/results.csv" | wc -c) + 7 ))
head -c "$cut_at" "$tmp/j1/results.csv" >"$tmp/r/results.csv"
err=$("$bin" sweep "$small" -j 2 -o "$tmp/r" --resume 2>&1 >/dev/null) || bad "resume failed: $err"
cmp "$tmp/j1/results.csv" "$tmp/r/results.csv" || bad "resumed results.csv differs from the uninterrupted one"
grep -q "4 resumed" <<<"$err" || bad "resume should reuse 4 rows, said: $err"
n=$((n + 1))
err=$("$bin" sweep "$small" -o "$tmp/r" --resume 2>&1 >/dev/null) || bad "resuming a complete sweep failed: $err"
grep -q "(10 ok, 0 failed, 10 resumed)" <<<"$err" || bad "resuming a complete sweep should redo nothing: $err"
cmp "$tmp/j1/results.csv" "$tmp/r/results.csv" || bad "resuming a complete sweep changed results.csv"

# An existing results directory needs --resume or --force; another sweep cannot resume it.
n=$((n + 1))
out=$("$bin" sweep "$small" -o "$tmp/r" -q 2>&1); rc=$?
[[ $rc -eq 2 && "$out" == "$tmp/r/results.csv: already exists; use --resume to continue this sweep, --force to start over, or another -o DIR" ]] ||
  bad "rerun into an existing directory: exit $rc, $out"
n=$((n + 1))
out=$("$bin" sweep tests/cli/sweep/small_other.yaml -o "$tmp/r" --resume -q 2>&1); rc=$?
[[ $rc -eq 2 ]] || bad "resume with another sweep: exit $rc, expected 2"
grep -q "^$tmp/r/manifest.json: sweep.hash: $tmp/r holds results of a different sweep ('small' from tests/cli/sweep/small.yaml" <<<"$out" ||
  bad "resume with another sweep: unexpected message: $out"
cmp "$tmp/j1/results.csv" "$tmp/r/results.csv" || bad "a refused resume modified results.csv"
n=$((n + 1))
"$bin" sweep tests/cli/sweep/small_other.yaml -o "$tmp/r" --force -q || bad "--force did not start over"

# Failed runs: error rows, exit 3, nothing aborted.
n=$((n + 1))
"$bin" sweep tests/cli/sweep/fails.yaml -o "$tmp/f" -q; rc=$?
[[ $rc -eq 3 ]] || bad "a sweep with failed runs should exit 3, got $rc"
[[ $(grep -c '^[0-9]*,[0-9]*,error,[12]TB,.*overflows int64 picoseconds' "$tmp/f/results.csv") -eq 2 ]] ||
  bad "failed runs should be error rows saying why: $(cat "$tmp/f/results.csv")"

# A plot renders when matplotlib is there (MOESIM_PYTHON picks the interpreter).
# Like `moesim plot`: python3 on PATH, else Debian's /usr/bin/python3 (pyenv may shadow it).
py="${MOESIM_PYTHON:-python3}"
if [[ -z "${MOESIM_PYTHON:-}" ]] && ! python3 -c 'import matplotlib' 2>/dev/null; then py=/usr/bin/python3; fi
if "$py" -c 'import matplotlib' 2>/dev/null; then
  n=$((n + 1))
  MOESIM_PYTHON="$py" "$bin" plot "$tmp/j1/results.csv" heatmap --x routing.capacity_factor --y routing.alpha \
    --metric drop_fraction -o "$tmp/plots" >/dev/null || bad "moesim plot failed"
  png="$tmp/plots/drop_fraction_heatmap_routing.capacity_factor_routing.alpha.png"
  if [[ ! -f "$png" ]] || [[ $(wc -c <"$png") -lt 10000 ]] || [[ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" != 89504e470d0a1a0a ]]; then
    bad "plot: $png missing, not a PNG, or under 10 kB"
  fi
else
  echo "note: matplotlib not installed, plot not checked" >&2
fi

# Example studies at reduced size: the "# ci:" line of each file holds extra arguments.
if [[ "$examples" == --examples ]]; then
  for y in scenarios/sweeps/*.yaml; do
    n=$((n + 1))
    args=()
    line=$(grep -m1 '^# ci:' "$y" | sed 's/^# ci://')
    read -r -a args <<<"$line"
    "$bin" sweep "$y" -j 2 -o "$tmp/ex/$(basename "$y" .yaml)" -q "${args[@]}" || bad "$y failed"
  done
fi
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
