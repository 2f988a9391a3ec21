#!/usr/bin/env bash
# Fails if any C++/CUDA source differs from the repo's .clang-format style.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.cu' '*.cuh' '*.h')
if ((${#files[@]} == 0)); then echo "check-format: no files"; exit 0; fi
clang-format --dry-run --Werror "${files[@]}"
echo "check-format: ${#files[@]} files clean"
