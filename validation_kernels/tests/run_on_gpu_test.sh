#!/usr/bin/env bash
# CPU test of run_on_gpu.sh with stand-ins for vk_harness and cmake:
#   * output layout: everything in $OUT/<run_id>/ (no deeper folder), log.txt and env.txt always;
#   * the CSVs land there whatever the harness's exit status (a failing harness keeps its rows);
#   * a hang (exit 3) is retried with --skip-impl of the impl the harness wrote to its skip file;
#   * the build forces CUDA on, passes the nvcc path, prefers Ninja, and refuses a harness whose
#     --build-info says it was built without CUDA (the silent dry-run-only build).
#   usage: run_on_gpu_test.sh path/to/run_on_gpu.sh
set -uo pipefail
script="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
check() {  # check DESCRIPTION COMMAND...
  local what="$1"
  shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fail=1; fi
}

# ---- a stand-in vk_harness --------------------------------------------------------------------
cat > "$work/fake_harness" <<'EOF'
#!/usr/bin/env bash
# Behaviour from FAKE_MODE: ok | fail | hang_once | nocuda | sleep
out="" id="" skipfile="" selftest_only=0 grid=quick
args="$*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-info) [[ "${FAKE_MODE:-ok}" == nocuda ]] && echo "cuda=0 nvcc= git=" || echo "cuda=1 nvcc=13.0 git=x archs=sm_90a,sm_80"; exit 0 ;;
    --out) out="$2"; shift ;;
    --run-id) id="$2"; shift ;;
    --skip-file) skipfile="$2"; shift ;;
    --selftest-only) selftest_only=1 ;;
    --full) grid=full ;;
  esac
  shift
done
echo "$id $args" >> "$FAKE_CALLS"
[[ -f "$out/runs.csv" ]] || echo "schema_version,run_id,notes" > "$out/runs.csv"
echo "2,$id,fake" >> "$out/runs.csv"
[[ -f "$out/measurements.csv" ]] || echo "schema_version,run_id,impl,status,notes" > "$out/measurements.csv"
[[ -f "$out/selftest.csv" ]] || echo "schema_version,run_id,impl,case,status,notes" > "$out/selftest.csv"
if (( selftest_only )); then
  echo "2,$id,vk_wgmma,small_tails,ok," >> "$out/selftest.csv"
  exit 0
fi
echo "2,$id,vk_mma_sync,ok," >> "$out/measurements.csv"
case "${FAKE_MODE:-ok}" in
  fail) echo "fake: failing after one row" >&2; exit 1 ;;
  sleep) sleep 600 ;;
  hang_once)
    if [[ $grid == full && "$args" != *"--skip-impl vk_wgmma"* ]]; then
      echo "2,$id,vk_wgmma,error,watchdog" >> "$out/measurements.csv"
      echo vk_wgmma >> "$skipfile"
      exit 3
    fi ;;
esac
echo "fake: $id done"
exit 0
EOF
chmod +x "$work/fake_harness"

run() {  # run MODE RUN_ID [script args...]: runs the script, returns its status
  local mode="$1" id="$2"
  shift 2
  FAKE_MODE="$mode" FAKE_CALLS="$work/calls_$id" OUT="$work/out" VK_RUN_ID="$id" VK_HARNESS="$work/fake_harness" \
    bash "$script" "$@" > "$work/stdout_$id" 2>&1
}

# 1. A clean run: layout, log, env, the three stages in order.
run ok r1 --budget 200
rc=$?
check "clean run exits 0" test $rc -eq 0
check "files in \$OUT/<run_id>/" test -f "$work/out/r1/runs.csv" -a -f "$work/out/r1/measurements.csv" -a -f "$work/out/r1/log.txt" -a -f "$work/out/r1/env.txt"
check "nothing deeper than \$OUT/<run_id>/<file>" test -z "$(find "$work/out" -mindepth 3)"
check "at most 8 files come back" test "$(find "$work/out" -type f | wc -l)" -le 8
check "stages self-test, quick, full in order" test "$(cut -d' ' -f1 "$work/calls_r1" | tr '\n' ' ')" = "r1_selftest r1_quick r1_full "
check "grid stages skip the (already run) self-test" grep -q -- "--quick.*--no-selftest" "$work/calls_r1"
check "one runs.csv row per stage" test "$(grep -c '^2,' "$work/out/r1/runs.csv")" -eq 3
check "log has the harness output and the summary" grep -q "fake: r1_full done" "$work/out/r1/log.txt"
check "log summary lists row counts" grep -q "measurements.csv: 2 rows" "$work/out/r1/log.txt"
check "env.txt records the source hash" grep -q "source_hash" "$work/out/r1/env.txt"

# 2. A failing harness: files still there, the script says so, later stages still tried.
run fail r2 --budget 200
rc=$?
check "failing harness: script exits non-zero" test $rc -ne 0
check "failing harness: its CSV rows are kept" grep -q "r2_quick,vk_mma_sync" "$work/out/r2/measurements.csv"
check "failing harness: log written" grep -q "quick attempt 1: exit 1" "$work/out/r2/log.txt"

# 3. A hang in the full grid: retried once without the hung implementation.
run hang_once r3 --budget 200
rc=$?
check "hang: script recovers (exit 0)" test $rc -eq 0
check "hang: second attempt skips vk_wgmma" grep -q "^r3_full2 .*--skip-impl vk_wgmma" "$work/calls_r3"
check "hang: the error row stays" grep -q "r3_full,vk_wgmma,error" "$work/out/r3/measurements.csv"

# 4. A harness that outlives its stage is killed by the timeout; the files are still written.
start=$(date +%s)
VK_STAGE_GRACE=3 FAKE_MODE=sleep FAKE_CALLS="$work/calls_r4" OUT="$work/out" VK_RUN_ID=r4 VK_HARNESS="$work/fake_harness" \
  timeout 200 bash "$script" --budget 80 --quick-s 20 --no-full > "$work/stdout_r4" 2>&1
rc=$?
check "hang without watchdog: killed by the stage timeout, not the outer one" test $(( $(date +%s) - start )) -lt 60
check "timeout: non-zero exit" test $rc -ne 0
check "timeout: log and rows kept" grep -q "r4_quick,vk_mma_sync" "$work/out/r4/measurements.csv"

# 5. The build: CUDA forced on, nvcc path passed, Ninja when present; a CUDA-less harness refused.
mkdir -p "$work/bin"
cat > "$work/bin/fake_cmake" <<'EOF'
#!/usr/bin/env bash
echo "cmake $*" >> "$FAKE_CMAKE_LOG"
if [[ "$1" == "--build" ]]; then
  cp "$FAKE_HARNESS_SRC" "$2/vk_harness"
elif [[ "$1" == "--version" ]]; then
  echo "cmake version 3.99 (fake)"
else
  while [[ $# -gt 0 ]]; do [[ "$1" == "-B" ]] && mkdir -p "$2"; shift; done
fi
EOF
chmod +x "$work/bin/fake_cmake"
printf '#!/bin/sh\necho "Cuda compilation tools, release 13.0 (fake)"\n' > "$work/bin/nvcc"
chmod +x "$work/bin/nvcc"
FAKE_CMAKE_LOG="$work/cmake_log" FAKE_HARNESS_SRC="$work/fake_harness" FAKE_MODE=ok FAKE_CALLS="$work/calls_r5" \
  OUT="$work/out" VK_RUN_ID=r5 VK_CMAKE="$work/bin/fake_cmake" VK_NVCC="$work/bin/nvcc" VK_BUILD_DIR="$work/build" \
  bash "$script" --budget 200 --no-full > "$work/stdout_r5" 2>&1
rc=$?
check "build: succeeds with the stand-in toolchain" test $rc -eq 0
check "build: CUDA forced on" grep -q -- "-DMOESIM_WITH_CUDA=ON -DVK_REQUIRE_CUDA=ON" "$work/cmake_log"
check "build: nvcc path passed" grep -q -- "-DCMAKE_CUDA_COMPILER=$work/bin/nvcc" "$work/cmake_log"
if command -v ninja > /dev/null; then
  check "build: Ninja generator" grep -q -- "-G Ninja" "$work/cmake_log"
fi
check "build: build.log kept" test -f "$work/out/r5/build.log"
FAKE_CMAKE_LOG="$work/cmake_log6" FAKE_HARNESS_SRC="$work/fake_harness" FAKE_MODE=nocuda FAKE_CALLS="$work/calls_r6" \
  OUT="$work/out" VK_RUN_ID=r6 VK_CMAKE="$work/bin/fake_cmake" VK_NVCC="$work/bin/nvcc" VK_BUILD_DIR="$work/build6" \
  bash "$script" --budget 200 > "$work/stdout_r6" 2>&1
rc=$?
check "build: a CUDA-less harness is refused" test $rc -ne 0
check "build: refusal logged, no stage run" test ! -f "$work/calls_r6"
check "build: refusal still leaves log and env" test -f "$work/out/r6/log.txt" -a -f "$work/out/r6/env.txt"

if (( fail )); then
  echo "--- stdout of the runs ---"
  tail -n 30 "$work"/stdout_*
fi
exit $fail
