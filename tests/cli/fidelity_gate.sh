#!/usr/bin/env bash
# moesim fidelity: the regression gate trips on a deliberate regression, passes on the committed
# model, and the output does not depend on -j. Usage: fidelity_gate.sh MOESIM (from the repo root).
set -euo pipefail
moesim="$(realpath "$1")"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
base=validation/published/baseline.csv
sel='nccl-*'
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. The committed model against the committed baseline: ok.
"$moesim" fidelity -q --only "$sel" --baseline "$base" > "$tmp/ok.txt" || fail "gate failed on the committed model"
grep -q "gate: ok" "$tmp/ok.txt" || fail "no 'gate: ok' line"

# 2. Half the NIC efficiency (0.97 -> 0.485) in every scenario point: the ring all-reduce point that
#    passed its band leaves it, exit 4, and the report names it.
rc=0
"$moesim" fidelity -q --only "$sel" --baseline "$base" --set cluster.inter_node.efficiency=0.485 > "$tmp/bad.txt" || rc=$?
[[ $rc -eq 4 ]] || fail "expected exit 4 from the gate, got $rc"
grep -q "nccl-cx7-ndr-per-nic-busbw-expected-46-48: passed its band in the baseline" "$tmp/bad.txt" ||
  fail "the gate did not name the point that left its band"

# 3. A category MAPE that worsens by more than a point trips it too (half the NVLink bandwidth).
rc=0
"$moesim" fidelity -q --only "$sel" --baseline "$base" --set cluster.intra_node.efficiency=0.5 > "$tmp/bad2.txt" || rc=$?
[[ $rc -eq 4 ]] || fail "expected exit 4 with half the NVLink efficiency, got $rc"
grep -q "category comm-nccl: MAPE" "$tmp/bad2.txt" || fail "no category MAPE failure reported"

# 4. Byte-identical outputs for -j1 and -j3 (kernel, collective and dispatch points).
sub='deep*-v*-[di]*'
"$moesim" fidelity -q -j 1 --only "$sub" -o "$tmp/j1" > "$tmp/j1.txt"
"$moesim" fidelity -q -j 3 --only "$sub" -o "$tmp/j3" > "$tmp/j3.txt"
cmp "$tmp/j1/fidelity.csv" "$tmp/j3/fidelity.csv" || fail "fidelity.csv differs between -j1 and -j3"
cmp "$tmp/j1/fidelity.md" "$tmp/j3/fidelity.md" || fail "fidelity.md differs between -j1 and -j3"
cmp "$tmp/j1.txt" "$tmp/j3.txt" || fail "stdout differs between -j1 and -j3"

# 5. A malformed baseline is a located configuration error (exit 2) before anything runs.
printf 'id,category\nx,y\n' > "$tmp/bad.csv"
rc=0
"$moesim" fidelity -q --only "$sel" --baseline "$tmp/bad.csv" 2> "$tmp/err.txt" > /dev/null || rc=$?
[[ $rc -eq 2 ]] || fail "expected exit 2 for a malformed baseline, got $rc"
grep -q "bad.csv:1:0: baseline: no 'status' column" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "unexpected message"; }
echo "fidelity gate: ok"
