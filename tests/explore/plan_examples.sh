#!/usr/bin/env bash
# Every planner example in scenarios/plans/ runs (reduced by its "# ci-args:" line), gives
# byte-identical outputs with -j 1 and -j 2, and its best scenario runs under `moesim run` with
# the step time the plan reported.
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0; n=0
for plan in scenarios/plans/*.yaml; do
  name=$(basename "$plan" .yaml); n=$((n + 1))
  read -r -a args <<<"$(sed -n 's/^# ci-args: //p' "$plan")"
  ok=1
  for j in 1 2; do
    if ! "$bin" plan "$plan" "${args[@]}" -j "$j" -q -o "$tmp/$name.j$j" >"$tmp/$name.j$j.out" 2>"$tmp/$name.j$j.err"; then
      echo "FAIL $plan: moesim plan -j $j failed:" >&2; cat "$tmp/$name.j$j.err" >&2; ok=0
    fi
  done
  if [[ $ok == 1 ]] && ! diff -r "$tmp/$name.j1" "$tmp/$name.j2" >&2; then
    echo "FAIL $plan: outputs differ between -j 1 and -j 2" >&2; ok=0
  fi
  if [[ $ok == 1 ]] && ! cmp -s "$tmp/$name.j1.out" "$tmp/$name.j2.out"; then
    echo "FAIL $plan: stdout differs between -j 1 and -j 2" >&2; ok=0
  fi
  top="$tmp/$name.j1/top-01.yaml"
  if [[ $ok == 1 && ! -f "$top" ]]; then echo "FAIL $plan: no top-01.yaml written" >&2; ok=0; fi
  if [[ $ok == 1 ]] && ! "$bin" run "$top" --json "$tmp/$name.top.json" >/dev/null 2>"$tmp/$name.top.err"; then
    echo "FAIL $plan: moesim run top-01.yaml failed:" >&2; cat "$tmp/$name.top.err" >&2; ok=0
  fi
  if [[ $ok == 1 ]] && ! python3 - "$tmp/$name.j1/plan.csv" "$tmp/$name.top.json" <<'PY'
import csv, json, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["rank"] == "1"]
report = json.load(open(sys.argv[2]))
if len(rows) != 1 or float(rows[0]["step_time_us"]) != float(report["step_time_us"]):
    sys.exit(f"rank-1 step_time_us {rows[0]['step_time_us'] if rows else None} != moesim run {report['step_time_us']}")
PY
  then echo "FAIL $plan: top-01.yaml does not reproduce the planned step time" >&2; ok=0; fi
  [[ $ok == 1 ]] || fail=$((fail + 1))
done
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 ]]
