#!/usr/bin/env bash
# One device command for a lent GPU: build vk_harness, self-test every GEMM kernel, a quick grid,
# then the full grid under what is left of the time budget. Everything goes to $OUT/<run_id>/
# (at most two folders below $OUT, the device machine's limit), whatever any stage's exit status:
#   runs.csv measurements.csv counts.csv selftest.csv   the harness's files (one runs.csv row per stage)
#   log.txt     this script's and the harness's output, stage by stage, and a summary
#   env.txt     GPU name, driver, clocks before and after, CUDA / cuBLAS / compiler versions, source hash
#   build.log   the build's output (only when it built)
#
#   usage: validation_kernels/run_on_gpu.sh [--budget SECONDS] [--quick-s SECONDS] [--prebuilt DIR]
#                                           [--skip-impl NAME]... [--no-full]
#   --budget S    whole script, build included (default 480): the full grid gets what is left
#   --quick-s S   budget of the quick grid (default 75)
#   --prebuilt D  use D/vk_harness when it runs and reports CUDA (carried build); else build
#   --skip-impl   passed to every stage
#   --no-full     stop after the quick grid
# Environment: OUT (default ./out-gpu), VK_STAGE_GRACE (seconds a stage may overrun its budget
# before `timeout` stops it, default 30), VK_RUN_ID, VK_GIT_COMMIT (the copy on the device has no
# .git), VK_BUILD_DIR (default /tmp/vk-build), VK_NVCC, VK_HARNESS (use this binary, never build:
# the CPU test of this script), VK_CMAKE (cmake to use).
# Exit status: 0 when the full grid (or, with --no-full, the quick grid) finished; 1 otherwise.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
t_start=$(date +%s)
budget=480
quick_s=75
prebuilt=""
full=1
skips=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --quick-s) quick_s="$2"; shift 2 ;;
    --prebuilt) prebuilt="$2"; shift 2 ;;
    --skip-impl) skips+=("$2"); shift 2 ;;
    --no-full) full=0; shift ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
    *) echo "run_on_gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

run_id="${VK_RUN_ID:-$(date -u +%Y%m%dT%H%M%SZ)}"
out_root="${OUT:-$PWD/out-gpu}"
out="$out_root/$run_id"
mkdir -p "$out"
log="$out/log.txt"
env_txt="$out/env.txt"
build_dir="${VK_BUILD_DIR:-/tmp/vk-build}"
state="$(mktemp -d)"
skip_file="$state/disabled_impls"
touch "$skip_file"
exec > >(tee -a "$log") 2>&1
tee_pid=$!

elapsed() { echo $(( $(date +%s) - t_start )); }
left() { echo $(( budget - $(elapsed) )); }
say() { echo "[run_on_gpu $(elapsed)s] $*"; }
stages=()
final_rc=1

snapshot_gpu() {  # $1: label
  {
    echo "## nvidia-smi ($1, $(date -u +%FT%TZ))"
    nvidia-smi --query-gpu=name,driver_version,pstate,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu,memory.used,memory.total --format=csv 2>&1 || echo "nvidia-smi unavailable"
  } >> "$env_txt"
}

finish() {
  local rc=$?
  set +e
  snapshot_gpu "end"
  say "summary (budget ${budget}s, wall $(elapsed)s):"
  for s in "${stages[@]}"; do echo "  $s"; done
  for f in runs.csv measurements.csv counts.csv selftest.csv; do
    [[ -f "$out/$f" ]] && echo "  $f: $(( $(wc -l < "$out/$f") - 1 )) rows"
  done
  if [[ -f "$out/measurements.csv" ]]; then
    echo "  measurement rows by status:"
    awk -F, 'NR==1 { for (i = 1; i <= NF; ++i) if ($i == "status") c = i; next } c { n[$c]++ } END { for (s in n) printf "    %-14s %d\n", s, n[s] }' "$out/measurements.csv"
  fi
  if [[ -f "$out/selftest.csv" ]]; then
    echo "  self-test (impl case status):"
    awk -F, 'NR==1 { for (i = 1; i <= NF; ++i) { if ($i == "impl") a = i; if ($i == "case") b = i; if ($i == "status") c = i } next } { printf "    %-22s %-16s %s\n", $a, $b, $c }' "$out/selftest.csv"
  fi
  [[ -s "$skip_file" ]] && echo "  disabled after a failure or hang: $(sort -u "$skip_file" | tr '\n' ' ')"
  echo "  files under \$OUT/$run_id (the lead commits them unedited to validation_kernels/measurements/<gpu>/$run_id/):"
  # The device machine returns at most 8 files of 16 MiB: compress anything near the limit.
  for f in "$out"/*; do
    [[ -f "$f" ]] || continue
    if [[ $(stat -c %s "$f") -gt 15000000 && "$f" != "$log" ]]; then gzip -9 -f "$f"; fi
  done
  ls -l "$out" | sed 's/^/    /'
  rm -rf "$state"
  say "exit $final_rc (last command status $rc)"
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null || sleep 1  # log.txt complete before the device machine collects $OUT
  exit "$final_rc"
}
trap finish EXIT

# ---- environment ------------------------------------------------------------------------------
{
  echo "# run_on_gpu.sh run $run_id"
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname) $(uname -srm)"
  echo "budget_s: $budget quick_s: $quick_s"
  echo "source_hash (sha256 over validation_kernels sources, sorted paths): $(
    cd "$here/.." && find validation_kernels -type f \( -name '*.cu' -o -name '*.cpp' -o -name '*.hpp' -o -name 'CMakeLists.txt' -o -name '*.sh' \) \
      -not -path '*/measurements/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
  echo "git_commit: ${VK_GIT_COMMIT:-$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "nvcc: $( (${VK_NVCC:-nvcc} --version 2>/dev/null || /usr/local/cuda/bin/nvcc --version 2>/dev/null) | tail -1)"
  echo "cmake: $( (${VK_CMAKE:-cmake} --version 2>/dev/null) | head -1)"
  echo "ninja: $(ninja --version 2>/dev/null || echo absent)"
  echo "## libraries (ldconfig -p)"
  (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | grep -E 'libcublas|libnvidia-ml|libcuda\.' || echo "(none listed)"
  echo "## cuBLAS files in the toolkit and Python environments"
  ls /usr/local/cuda*/lib64/libcublas.so.* 2>/dev/null
  ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/cu1*/lib /usr/local/lib/python3*/dist-packages/nvidia/cu1*/lib 2>/dev/null
  echo "## nvidia-smi -q (excerpt)"
  nvidia-smi -q 2>/dev/null | grep -E 'Product Name|Driver Version|CUDA Version|Clocks Event Reasons|Persistence|Compute Mode|MIG Mode|Current|Max Clocks' -A0 | head -40
} > "$env_txt" 2>&1
snapshot_gpu "start"
say "run $run_id, output in $out, budget ${budget}s"
git_commit="${VK_GIT_COMMIT:-$(git -C "$here" rev-parse HEAD 2>/dev/null || true)}"

# ---- build ------------------------------------------------------------------------------------
harness=""
works() { [[ -x "$1" ]] && "$1" --build-info 2>/dev/null | grep -q '^cuda=1'; }
if [[ -n "${VK_HARNESS:-}" ]]; then
  harness="$VK_HARNESS"
  stages+=("build: skipped (VK_HARNESS=$harness)")
elif [[ -n "$prebuilt" ]] && works "$prebuilt/vk_harness"; then
  harness="$prebuilt/vk_harness"
  stages+=("build: skipped, prebuilt $harness ($("$harness" --build-info))")
else
  [[ -n "$prebuilt" ]] && say "prebuilt $prebuilt/vk_harness does not run here or lacks CUDA; building"
  nvcc_path="${VK_NVCC:-$(command -v nvcc || true)}"
  if [[ -z "$nvcc_path" ]]; then
    for c in /usr/local/cuda/bin/nvcc $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -V -r); do
      [[ -x "$c" ]] && { nvcc_path="$c"; break; }
    done
  fi
  cmake_bin="${VK_CMAKE:-cmake}"
  if command -v ninja >/dev/null 2>&1; then gen=(-G Ninja); elif command -v make >/dev/null 2>&1; then gen=(-G "Unix Makefiles"); else gen=(); fi
  if [[ -z "$nvcc_path" ]]; then
    stages+=("build: FAILED (no nvcc on PATH, in VK_NVCC or under /usr/local/cuda*)")
    exit 1
  fi
  if [[ ${#gen[@]} -eq 0 ]]; then
    stages+=("build: FAILED (neither ninja nor make found)")
    exit 1
  fi
  say "building with $nvcc_path, ${gen[*]}, $(nproc) jobs"
  t_build=$(date +%s)
  # CUDA forced on (a missing nvcc would otherwise give a dry-run-only harness), tests off.
  build_limit=$(( $(left) - 120 ))
  (( build_limit > 300 )) && build_limit=300
  (( build_limit < 60 )) && build_limit=60
  if timeout -k 10 "$build_limit" "$cmake_bin" -S "$here" -B "$build_dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DMOESIM_WITH_CUDA=ON -DVK_REQUIRE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" -DMOESIM_BUILD_TESTS=OFF \
        > "$out/build.log" 2>&1 &&
     timeout -k 10 "$build_limit" "$cmake_bin" --build "$build_dir" -j "$(nproc)" --target vk_harness >> "$out/build.log" 2>&1; then
    harness="$build_dir/vk_harness"
  fi
  if [[ -z "$harness" ]] || ! works "$harness"; then
    tail -40 "$out/build.log"
    stages+=("build: FAILED after $(( $(date +%s) - t_build ))s (see build.log)")
    exit 1
  fi
  stages+=("build: ok in $(( $(date +%s) - t_build ))s ($("$harness" --build-info))")
fi
say "harness: $harness"

# ---- stages -----------------------------------------------------------------------------------
# run_stage NAME BUDGET_S ARGS...: runs the harness under `timeout` (its own --budget stops it first),
# retrying without the implementation that hung or faulted (exit 3) while time is left.
run_stage() {
  local name="$1" stage_budget="$2"
  shift 2
  local attempt rc=1
  for attempt in 1 2 3; do
    local skip_args=()
    for s in "${skips[@]}" $(sort -u "$skip_file"); do skip_args+=(--skip-impl "$s"); done
    local b=$stage_budget
    (( b > $(left) - 10 )) && b=$(( $(left) - 10 ))
    if (( b < 15 )); then
      stages+=("$name: not run (${b}s left)")
      return 1
    fi
    local id="${run_id}_${name}"
    (( attempt > 1 )) && id="${id}${attempt}"
    say "stage $name (attempt $attempt, ${b}s, run_id $id) ${skip_args[*]}"
    timeout -k 15 $(( b + ${VK_STAGE_GRACE:-30} )) "$harness" "$@" --budget "$b" --out "$out" --run-id "$id" \
      --skip-file "$skip_file" --git-commit "${git_commit:-unknown}" "${skip_args[@]}"
    rc=$?
    stages+=("$name attempt $attempt: exit $rc")
    case $rc in
      0) return 0 ;;
      3) say "$name: a kernel hung or faulted: $(sort -u "$skip_file" | tr '\n' ' ')- retrying without it" ;;
      124|137) say "$name: killed at its time limit"; return $rc ;;
      *) return $rc ;;
    esac
  done
  return $rc
}

run_stage selftest 90 --selftest-only --heldout 0
selftest_rc=$?
# The grid stages skip the self-test when its own stage finished (its failures are in the skip
# file); otherwise each runs it first.
st_flag=(--no-selftest)
[[ $selftest_rc -ne 0 ]] && st_flag=()
run_stage quick "$quick_s" --quick --heldout 12 "${st_flag[@]}"
quick_rc=$?
if (( full )); then
  run_stage full $(( $(left) - 15 )) --full --heldout 150 "${st_flag[@]}"
  full_rc=$?
  [[ $full_rc -eq 0 ]] && final_rc=0
else
  [[ $quick_rc -eq 0 ]] && final_rc=0
fi
exit "$final_rc"
