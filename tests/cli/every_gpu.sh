#!/usr/bin/env bash
# Every GPU that `moesim describe gpus` lists must run the default scenario (issue 15): the
# scenario with cluster.gpu overridden to each catalog name, in the flow and the analytical
# network model. Fails when the catalog lists no GPU, when a run exits non-zero, or when a run's
# JSON report has no positive step time.
# Usage: tests/cli/every_gpu.sh BIN
set -uo pipefail
bin="$(realpath "$1")"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0; n=0
bad() { echo "FAIL $*" >&2; fail=$((fail + 1)); }

# The table's rows run from the third line to the first blank line; the name is the first field.
mapfile -t gpus < <("$bin" describe gpus | awk 'NR > 2 && NF == 0 { exit } NR > 2 { print $1 }')
((${#gpus[@]} > 0)) || { echo "FAIL describe gpus listed no GPU" >&2; exit 1; }
for g in "${gpus[@]}"; do
  for model in flow analytical; do
    n=$((n + 1))
    if ! "$bin" run scenarios/default.yaml --set "cluster.gpu=$g" --set "network.model=$model" \
      --json "$tmp/$g-$model.json" >"$tmp/out" 2>"$tmp/err"; then
      bad "gpu $g ($model): moesim run exited non-zero: $(head -c 400 "$tmp/err")"
      continue
    fi
    python3 - "$tmp/$g-$model.json" <<'PY' || bad "gpu $g ($model): no positive step_time_us in the JSON report"
import json, sys
t = json.load(open(sys.argv[1])).get("step_time_us", 0)
sys.exit(0 if isinstance(t, (int, float)) and t > 0 else 1)
PY
  done
done
echo "every_gpu: ${#gpus[@]} GPUs, $n runs, $fail failures"
((fail == 0))
