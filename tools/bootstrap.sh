#!/usr/bin/env bash
# moesim bootstrap: install Debian 12 packages, build, then either run the default scenario
# ("run") or the whole test suite ("test"). Idempotent; safe to re-run.
#
#   bash tools/bootstrap.sh run     # set up, build, run scenarios/default.yaml
#   bash tools/bootstrap.sh test    # set up, build, run every test (ctest)
#
# Environment: BUILD_DIR (default build), JOBS (default nproc), SKIP_APT=1 to skip apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-$(nproc)}"

PACKAGES=(build-essential cmake git pkg-config
          libyaml-cpp-dev libfmt-dev libboost-graph-dev catch2 libcli11-dev nlohmann-json3-dev
          python3 python3-matplotlib clang-format clang libclang-rt-14-dev)

if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"

case "$mode" in
  run)
    "$BUILD_DIR"/cli/moesim run scenarios/default.yaml
    ;;
  test)
    ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
    ;;
  build)
    ;;
  *)
    echo "usage: bash tools/bootstrap.sh run|test|build" >&2
    exit 2
    ;;
esac
