#!/usr/bin/env bash
# Writes the trace of every train/prefill/decode scenario and checks its format.
set -uo pipefail
bin="$1"
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0; n=0
# The checker must reject a trace whose slices overlap without nesting and one with an unpaired flow.
cat >"$tmp/bad1.json" <<'JSON'
{"traceEvents":[{"name":"process_name","ph":"M","pid":0,"args":{"name":"GPU 0"}},
{"name":"thread_name","ph":"M","pid":0,"tid":0,"args":{"name":"compute"}},
{"name":"a","ph":"X","pid":0,"tid":0,"ts":1.0,"dur":2.0},{"name":"b","ph":"X","pid":0,"tid":0,"ts":2.0,"dur":2.0}]}
JSON
cat >"$tmp/bad2.json" <<'JSON'
{"traceEvents":[{"name":"process_name","ph":"M","pid":0,"args":{"name":"GPU 0"}},
{"name":"thread_name","ph":"M","pid":0,"tid":0,"args":{"name":"compute"}},
{"name":"a","ph":"X","pid":0,"tid":0,"ts":1.0,"dur":2.0},{"name":"f","ph":"s","id":3,"pid":0,"tid":0,"ts":1.5}]}
JSON
for b in bad1 bad2; do
  n=$((n + 1))
  if python3 tests/golden/check_trace.py "$tmp/$b.json" 2>/dev/null; then echo "FAIL checker accepted $b" >&2; fail=$((fail + 1)); fi
done
for y in scenarios/*.yaml; do
  grep -qE "mode: *(train|prefill|decode)" "$y" || continue
  n=$((n + 1))
  name=$(basename "$y" .yaml)
  if ! "$bin" run "$y" --trace "$tmp/$name.json" >/dev/null 2>"$tmp/err"; then
    echo "FAIL $y: run failed" >&2; cat "$tmp/err" >&2; fail=$((fail + 1)); continue
  fi
  python3 tests/golden/check_trace.py "$tmp/$name.json" || { echo "FAIL $y: trace format" >&2; fail=$((fail + 1)); }
done
echo "$((n - fail)) passed, $fail failed"
[[ $fail -eq 0 && $n -gt 0 ]]
