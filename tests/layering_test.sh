#!/usr/bin/env bash
# Architecture check: #include lines may only point "down" the layer stack
#   sim <- config <- hardware <- models <- engine <- explore <- cli
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A forbidden=(
  [sim]="config hardware models engine explore cli"
  [config]="hardware models engine explore cli"
  [hardware]="models engine explore cli"
  [models]="engine explore cli"
  [engine]="explore cli"
  [explore]="cli"
)
fail=0
for layer in "${!forbidden[@]}"; do
  for up in ${forbidden[$layer]}; do
    if grep -rnE "#include \"${up}/" "$layer" --include='*.hpp' --include='*.cpp' 2>/dev/null; then
      echo "layering violation: $layer/ includes $up/" >&2
      fail=1
    fi
  done
done
[[ $fail == 0 ]] && echo "layering: ok"
exit $fail
