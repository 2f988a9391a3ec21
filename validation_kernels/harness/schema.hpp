// The CSV schema of a measurement run: the one place the column lists live.
// README.md documents the same columns for `moesim calibrate`; tests/grid_test.cpp checks they agree.
#pragma once

#include <array>
#include <string_view>

namespace moesim::vk {

/// Bumped whenever a column is added, removed, renamed or changes meaning.
/// 2: runs.csv gains run_status, budget_s, configs_skipped_budget, disabled_impls, cublas_path;
///    measurements.csv gains the attention shape (attn_batch, q_len, kv_len, heads, kv_heads,
///    head_dim, causal) and the statuses `invalidated` / `skipped_selftest`; missing numbers are
///    empty fields (never `nan`); selftest.csv is new. Every version-1 column keeps its meaning.
inline constexpr int kSchemaVersion = 2;

/// runs.csv: one row per process run (the machine, its software, and what the probes saw).
inline constexpr std::array<std::string_view, 31> kRunsColumns = {"schema_version",
                                                                  "run_id",
                                                                  "git_commit",
                                                                  "gpu_name",
                                                                  "sm_count",
                                                                  "cc",
                                                                  "l2_bytes",
                                                                  "hbm_bytes",
                                                                  "driver_version",
                                                                  "runtime_version",
                                                                  "cublas_version",
                                                                  "nvcc_version",
                                                                  "sm_clock_max_mhz",
                                                                  "sm_clock_probed_mhz",
                                                                  "hbm_gbps_probed",
                                                                  "bf16_tflops_probed",
                                                                  "fp8_tflops_probed",
                                                                  "launch_us_probed",
                                                                  "grid",
                                                                  "seed",
                                                                  "configs_planned",
                                                                  "configs_done",
                                                                  "wall_s",
                                                                  "nvml",
                                                                  "host",
                                                                  "run_status",
                                                                  "budget_s",
                                                                  "configs_skipped_budget",
                                                                  "disabled_impls",
                                                                  "cublas_path",
                                                                  "notes"};

/// measurements.csv: one row per (configuration, implementation, timing method).
inline constexpr std::array<std::string_view, 58> kMeasurementColumns = {"schema_version",
                                                                         "run_id",
                                                                         "config_id",
                                                                         "heldout",
                                                                         "kernel_family",
                                                                         "impl",
                                                                         "impl_config",
                                                                         "dtype_in",
                                                                         "dtype_out",
                                                                         "num_experts_total",
                                                                         "num_experts_local",
                                                                         "topk",
                                                                         "tokens",
                                                                         "routed_rows",
                                                                         "K",
                                                                         "N",
                                                                         "capacity",
                                                                         "attn_batch",
                                                                         "q_len",
                                                                         "kv_len",
                                                                         "heads",
                                                                         "kv_heads",
                                                                         "head_dim",
                                                                         "causal",
                                                                         "distribution",
                                                                         "dist_param",
                                                                         "dist_seed",
                                                                         "m_min",
                                                                         "m_max",
                                                                         "m_mean",
                                                                         "m_cv",
                                                                         "n_active_experts",
                                                                         "tiles_total",
                                                                         "waves",
                                                                         "flops",
                                                                         "bytes_min",
                                                                         "l2_mode",
                                                                         "timing_method",
                                                                         "batch",
                                                                         "warmup_iters",
                                                                         "timed_iters",
                                                                         "time_us_median",
                                                                         "time_us_mean",
                                                                         "time_us_min",
                                                                         "time_us_p10",
                                                                         "time_us_p90",
                                                                         "time_us_std",
                                                                         "sm_clock_mhz_before",
                                                                         "sm_clock_mhz_after",
                                                                         "clock_drift_flag",
                                                                         "power_w",
                                                                         "temp_c",
                                                                         "max_rel_err",
                                                                         "status",
                                                                         "order_index",
                                                                         "model",
                                                                         "variant",
                                                                         "notes"};

/// counts.csv: the exact per-expert row counts of a configuration, space-separated, expert 0 first
/// (referenced from measurements.csv by config_id).
inline constexpr std::array<std::string_view, 4> kCountsColumns = {"schema_version", "run_id", "config_id", "counts"};

/// selftest.csv: one row per (GEMM implementation, self-test case): every output element checked,
/// plus the rows that must stay untouched. A failed case disables the implementation for the run.
inline constexpr std::array<std::string_view, 22> kSelftestColumns = {
    "schema_version", "run_id",    "impl",        "impl_config", "case",     "kernel_family", "dtype_in", "experts",
    "rows",           "N",         "K",           "capacity",    "elements", "max_abs_err",   "rel_err",  "bad",
    "nonfinite",      "unwritten", "overwritten", "status",      "wall_ms",  "notes"};

}  // namespace moesim::vk
