#!/usr/bin/env bash
# The MPI sweep executor gives the same results.csv as the thread executor: runs
# tests/cli/sweep/small.yaml with the plain build at -j1 and -j2 and with the MPI build under
# `mpirun -n 1` and `mpirun -n 3 --oversubscribe`, and compares the CSVs byte for byte; then
# resumes a cut results.csv under -n 3 and checks a failing sweep exits 3 under MPI too.
# Usage: tests/cli/sweep_mpi.sh MPI_BIN PLAIN_BIN
set -uo pipefail
mpi_bin="$1"
bin="$2"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Open MPI refuses to run as root without these (CI containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe)
fail=0
bad() { echo "FAIL $*" >&2; fail=$((fail + 1)); }
small=tests/cli/sweep/small.yaml

"$bin" sweep "$small" -j 1 -o "$tmp/j1" -q || bad "-j1 failed"
"$bin" sweep "$small" -j 2 -o "$tmp/j2" -q || bad "-j2 failed"
"${mpirun[@]}" -n 1 "$mpi_bin" sweep "$small" -o "$tmp/n1" -q || bad "mpirun -n 1 failed"
"${mpirun[@]}" -n 3 "$mpi_bin" sweep "$small" -o "$tmp/n3" -q || bad "mpirun -n 3 failed"
for d in j2 n1 n3; do
  cmp "$tmp/j1/results.csv" "$tmp/$d/results.csv" || bad "results.csv of $d differs from -j1"
done
grep -q '"ranks": 3' "$tmp/n3/manifest.json" || bad "the -n 3 manifest does not record 3 ranks"

# Resume under MPI after a cut inside the 4th row.
cp -r "$tmp/n3" "$tmp/r"
head -c $(( $(head -4 "$tmp/j1/results.csv" | wc -c) + 5 )) "$tmp/j1/results.csv" >"$tmp/r/results.csv"
"${mpirun[@]}" -n 3 "$mpi_bin" sweep "$small" -o "$tmp/r" --resume -q || bad "resume under mpirun -n 3 failed"
cmp "$tmp/j1/results.csv" "$tmp/r/results.csv" || bad "resumed results.csv differs"

# Failed runs: exit 3 from rank 0 (mpirun passes it on).
"${mpirun[@]}" -n 3 "$mpi_bin" sweep tests/cli/sweep/fails.yaml -o "$tmp/f" -q >/dev/null 2>&1; rc=$?
[[ $rc -eq 3 ]] || bad "failed runs under MPI: exit $rc, expected 3"
# Configuration errors: exit 2 on every rank, before any output directory exists.
"${mpirun[@]}" -n 3 "$mpi_bin" sweep tests/cli/sweep/bad_value.yaml -o "$tmp/b" -q >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 && ! -e "$tmp/b" ]] || bad "bad sweep under MPI: exit $rc, expected 2 and no output"

[[ $fail -eq 0 ]] && echo "sweep_mpi: ok (-j1, -j2, mpirun -n 1, -n 3 byte-identical; resume; exit codes)"
[[ $fail -eq 0 ]]
