#!/usr/bin/env bash
# Robustness of moesim's outputs (issue 23):
#  1. kill-safety: a sweep killed with SIGKILL at random moments and resumed (killed again while
#     resuming, several times) ends with a results.csv byte-identical to an uninterrupted run; a
#     killed plan leaves each output absent or complete
#  2. one sweep per directory: while a sweep runs, a second one on the same -o DIR (with
#     --resume or --force) is refused with exit 2 and touches nothing; the first finishes intact
#  3. a full disk: every output (a sweep's results.csv, journal and manifest; run -o DIR,
#     --json, --trace, --dump-topology; plan -o DIR; calibrate -o/--points) fails with exit 1 and
#     a message naming the file; a sweep's results.csv is a valid prefix, and once there is room
#     again --resume completes it byte-identically, even when not even the header was written.
#     Uses a small tmpfs in a private mount namespace (unshare -m), else only /dev/full.
# Usage: tests/cli/robustness.sh BIN [KILLS [SEED]]   (defaults: 6 kills, seed 1; the summary line
# "kill-resume: ..." gives the figures)
set -uo pipefail
bin="$(realpath "$1")"
kills="${2:-6}"
seed="${3:-1}"
cd "$(dirname "$0")/../.."
fail=0; n=0
bad() { echo "FAIL $*" >&2; fail=$((fail + 1)); }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sweep=tests/cli/sweep/medium.yaml
RANDOM=$seed

"$bin" sweep "$sweep" -o "$tmp/ref" -q || { echo "FAIL reference sweep" >&2; exit 1; }
ref="$tmp/ref/results.csv"
[[ $(wc -l <"$ref") -eq 49 ]] || bad "reference sweep: expected a header and 48 rows"
# How long an uninterrupted sweep takes, to spread the kills over it (milliseconds).
t0=$(date +%s%N); "$bin" sweep "$sweep" -o "$tmp/timing" -q; span=$(( ($(date +%s%N) - t0) / 1000000 ))
((span < 50)) && span=50

# ------------------------------------------------------------------ 1. kill and resume
n=$((n + 1))
dir="$tmp/k"
killed=0; resumes=0; rows_at_kill=()
first=1
while ((killed < kills)); do
  if ((first)); then "$bin" sweep "$sweep" -o "$dir" -q -j 2 & else "$bin" sweep "$sweep" -o "$dir" -q -j 2 --resume & fi
  pid=$!
  first=0
  sleep "$(printf '0.%03d' $((RANDOM % span % 1000)))"
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    killed=$((killed + 1))
    rows_at_kill+=("$(($(wc -l <"$dir/results.csv" 2>/dev/null || echo 1) - 1))")
  else
    wait "$pid"  # finished before the kill: start over to kill it again
    rm -rf "$dir"; first=1
  fi
  # What a kill leaves is a prefix of the uninterrupted results (a torn last line at most).
  if [[ -f "$dir/results.csv" ]]; then
    size=$(wc -c <"$dir/results.csv")
    cmp -s -n "$size" "$dir/results.csv" "$ref" || bad "after kill $killed: results.csv is not a prefix of the uninterrupted run"
  fi
  resumes=$((resumes + 1))
done
"$bin" sweep "$sweep" -o "$dir" -q --resume || bad "the final --resume failed"
cmp "$dir/results.csv" "$ref" || bad "results.csv after $killed kills and resumes differs from the uninterrupted run"
grep -q '"complete": true' "$dir/manifest.json" || bad "manifest.json does not say complete after resuming"
echo "kill-resume: $killed SIGKILLs at random moments (seed $seed, over ${span} ms), rows written at each kill: ${rows_at_kill[*]}; final results.csv byte-identical: $([[ $fail -eq 0 ]] && echo yes || echo NO)" >&2

# A plan has no --resume: killed at random moments, each of its files is absent or complete (they
# are written to a temporary file and renamed), and a rerun gives the same bytes.
n=$((n + 1))
plan_args=(scenarios/plans/mixtral-8x7b-train.yaml -q --set 'search.tp=[1]' --set 'search.capacity_factor=[1.25]')
"$bin" plan "${plan_args[@]}" -o "$tmp/pref" >/dev/null || bad "reference plan failed"
t0=$(date +%s%N); "$bin" plan "${plan_args[@]}" >/dev/null; pspan=$(( ($(date +%s%N) - t0) / 1000000 + 1 ))
plan_kills=0
for _ in 1 2 3 4; do
  rm -rf "$tmp/pk"
  "$bin" plan "${plan_args[@]}" -o "$tmp/pk" >/dev/null &
  pid=$!
  sleep "$(printf '0.%03d' $((RANDOM % pspan % 1000)))"
  kill -9 "$pid" 2>/dev/null && plan_kills=$((plan_kills + 1))
  wait "$pid" 2>/dev/null
  for f in "$tmp/pref"/*; do
    g="$tmp/pk/$(basename "$f")"
    [[ ! -e "$g" ]] || cmp -s "$f" "$g" || bad "a killed plan left a partial $(basename "$f")"
  done
done
"$bin" plan "${plan_args[@]}" -o "$tmp/pk" >/dev/null || bad "rerunning a killed plan failed"
for f in "$tmp/pref"/*; do cmp -s "$f" "$tmp/pk/$(basename "$f")" || bad "plan rerun after kills: $(basename "$f") differs"; done
echo "kill-plan: $plan_kills SIGKILLs over ${pspan} ms; every file absent or complete, rerun identical" >&2

# ------------------------------------------------------------------ 2. one sweep per directory
n=$((n + 1))
dir="$tmp/c"
"$bin" sweep "$sweep" -o "$dir" -q &
pid=$!
for _ in $(seq 200); do [[ -s "$dir/sweep.lock" ]] && break; sleep 0.02; done
for mode in --resume --force; do
  out=$("$bin" sweep "$sweep" -o "$dir" -q $mode 2>&1); rc=$?
  if kill -0 "$pid" 2>/dev/null; then
    [[ $rc -eq 2 ]] || bad "a second sweep ($mode) on a running sweep's directory: exit $rc, expected 2"
    [[ "$out" == "$dir/sweep.lock: $dir is in use by another moesim sweep (pid $pid); wait for it to finish, or use another -o DIR" ]] ||
      bad "a second sweep ($mode): unexpected message: $out"
  else
    echo "note: the first sweep finished before the second started; lock not exercised" >&2
  fi
done
wait "$pid" || bad "the first sweep failed while a second one was refused"
cmp "$dir/results.csv" "$ref" || bad "the first sweep's results.csv was disturbed by the refused one"
# Once it has finished, the directory is free again.
"$bin" sweep "$sweep" -o "$dir" -q --resume || bad "resuming a finished sweep after the lock was released failed"

# ------------------------------------------------------------------ 3. full disk
n=$((n + 1))
small=tests/cli/sweep/small.yaml
a2a=scenarios/all-to-all-2x8-h100.yaml
expect_enospc() {  # expect_enospc LABEL PATH-IN-MESSAGE -- command...
  local label="$1" path="$2"; shift 3
  local out rc
  out=$("$@" 2>&1 >/dev/null); rc=$?
  [[ $rc -eq 1 ]] || bad "$label: exit $rc on a full disk, expected 1 ($out)"
  [[ "$out" == *"cannot write $path"*"No space left on device"* ]] || bad "$label: message should name $path and say why: $out"
}
expect_enospc "run --json" /dev/full -- "$bin" run "$a2a" --json /dev/full
expect_enospc "run --dump-topology" /dev/full -- "$bin" run "$a2a" --dump-topology /dev/full

full_disk() {  # runs inside a private mount namespace with a 256 KiB tmpfs at $tmp/full
  local fs="$tmp/full"
  fill() {  # leave about $1 KiB free
    rm -f "$fs/filler"
    local avail; avail=$(df -k --output=avail "$fs" | tail -1)
    local k=$((avail - $1)); ((k > 0)) && head -c "$((k * 1024))" /dev/zero >"$fs/filler" 2>/dev/null
    sync
  }
  # A sweep that fills the disk mid-way: exit 1, a valid prefix, then --resume completes it.
  fill 8
  out=$("$bin" sweep "$sweep" -o "$fs/s" -q 2>&1); rc=$?
  [[ $rc -eq 1 && "$out" == *"No space left on device"* ]] || bad "sweep on a filling disk: exit $rc: $out"
  if [[ -f "$fs/s/results.csv" ]]; then
    size=$(wc -c <"$fs/s/results.csv")
    cmp -s -n "$size" "$fs/s/results.csv" "$ref" || bad "sweep on a full disk: results.csv is not a prefix of the real one"
  fi
  rm -f "$fs/filler"
  "$bin" sweep "$sweep" -o "$fs/s" -q --resume || bad "--resume after freeing space failed"
  cmp "$fs/s/results.csv" "$ref" || bad "sweep resumed after a full disk differs from the uninterrupted run"
  rm -rf "$fs/s"
  # Not even the header fits: the sweep fails; with room again, --resume starts it properly.
  fill 0
  "$bin" sweep "$small" -o "$fs/h" -q 2>/dev/null; rc=$?
  [[ $rc -eq 1 ]] || bad "sweep with no room for its header: exit $rc, expected 1"
  rm -f "$fs/filler"
  "$bin" sweep "$small" -o "$fs/h" -q --resume || bad "a sweep that failed to write its header could not be resumed"
  "$bin" sweep "$small" -o "$tmp/hr" -q
  cmp "$fs/h/results.csv" "$tmp/hr/results.csv" || bad "resumed headerless sweep differs"
  rm -rf "$fs/h"
  # Small outputs: each fails with exit 1 and names its file.
  fill 0
  mkdir -p "$fs/o" 2>/dev/null
  expect_enospc "run -o DIR" "$fs/o/" -- "$bin" run "$a2a" -o "$fs/o"
  expect_enospc "run --trace" "$fs/t.json" -- "$bin" run scenarios/mixtral-8x7b-decode.yaml --trace "$fs/t.json"
  expect_enospc "plan -o DIR" "$fs/p/" -- "$bin" plan scenarios/plans/mixtral-8x7b-train.yaml -q -o "$fs/p" \
    --set limits.max_gpus=8 --set 'search.tp=[1]' --set 'search.pp=[1]' --set 'search.micro_batches=[4]' \
    --set 'search.capacity_factor=[1.25]' --set 'search.recompute=[false]'
  rm -f "$fs/filler"
}
if unshare -m true 2>/dev/null; then
  mkdir -p "$tmp/full"
  export -f full_disk expect_enospc bad
  export bin tmp sweep small ref a2a
  out=$(unshare -m bash -c 'fail=0; mount -t tmpfs -o size=256k tmpfs "$tmp/full" && full_disk; echo "fails=$fail"' 2>&1)
  sub_fail=$(sed -n 's/^fails=//p' <<<"$out")
  grep -v '^fails=' <<<"$out" >&2
  [[ "$sub_fail" == 0 ]] || fail=$((fail + 1))
else
  echo "note: no private mount namespace (unshare -m): the full-disk checks used /dev/full only" >&2
fi

echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
