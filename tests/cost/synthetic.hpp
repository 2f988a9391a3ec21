#pragma once
// Test support: an H100 SXM GpuParams and a writer of synthetic measurement runs in the
// validation_kernels CSV schema (version 1), generated in a temporary directory at test time.
// Synthetic data never goes to validation_kernels/measurements/.

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "models/cost/cost_model.hpp"
#include "sim/rng.hpp"
#include "validation_kernels/harness/schema.hpp"

namespace moesim::models::cost::testing {

/// H100 SXM5 datasheet figures (NVIDIA H100 Tensor Core GPU datasheet): 132 SMs, dense
/// 1979 TFLOP/s fp8, 989 TFLOP/s bf16, 495 TFLOP/s tf32, 67 TFLOP/s fp32, 3.35 TB/s HBM3,
/// 50 MB L2. The peaks correspond to 4096 bf16 FLOP/clk/SM at 1.83 GHz (989.4e12 / 132 / 4096).
/// The 3 us launch overhead is a test assumption, not a datasheet figure. H800 SXM has the same
/// SM count, tensor peaks and HBM bandwidth (it differs in NVLink), so it also stands in for H800.
inline GpuParams h100_sxm() {
  GpuParams g;
  g.name = "h100-sxm (test)";
  g.sm_count = 132;
  g.sm_clock_hz = 1.83e9;
  g.peak_flops_fp8 = 1978.9e12;
  g.peak_flops_bf16 = 989.4e12;
  g.peak_flops_tf32 = 494.7e12;
  g.peak_flops_fp32 = 66.9e12;
  g.hbm_bytes_per_s = 3.35e12;
  g.l2_bytes = 50e6;
  g.launch_overhead = sim::SimTime::from_ps(3'000'000);
  return g;
}

/// The measurements.csv and runs.csv columns of the schema, taken from the kernels' own header
/// (validation_kernels/harness/schema.hpp) so the synthetic runs cannot drift from real ones.
inline const std::vector<std::string>& measurement_columns() {
  static const std::vector<std::string> c(moesim::vk::kMeasurementColumns.begin(),
                                          moesim::vk::kMeasurementColumns.end());
  return c;
}

inline const std::vector<std::string>& runs_columns() {
  static const std::vector<std::string> c(moesim::vk::kRunsColumns.begin(), moesim::vk::kRunsColumns.end());
  return c;
}

using Fields = std::map<std::string, std::string>;

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

inline void write_csv(const std::filesystem::path& p, const std::vector<std::string>& cols,
                      const std::vector<Fields>& rows) {
  std::ofstream f(p, std::ios::binary);
  for (std::size_t i = 0; i < cols.size(); ++i) f << (i ? "," : "") << cols[i];
  f << "\n";
  for (const Fields& r : rows) {
    for (std::size_t i = 0; i < cols.size(); ++i) {
      const auto it = r.find(cols[i]);
      f << (i ? "," : "") << csv_field(it == r.end() ? std::string() : it->second);
    }
    f << "\n";
  }
}

/// A synthetic run directory. Rows are generated from a model + log-normal noise by the tests.
struct SyntheticRun {
  std::filesystem::path dir;
  std::vector<Fields> runs;
  std::vector<Fields> meas;
  std::vector<Fields> counts;
  std::vector<std::string> meas_cols = measurement_columns();

  explicit SyntheticRun(const std::string& name) {
    dir = std::filesystem::temp_directory_path() / fmt::format("moesim_cost_{}_{}", name, ::getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  ~SyntheticRun() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  void add_run(const std::string& run_id, const std::string& gpu = "NVIDIA H100 80GB HBM3", int sms = 132) {
    runs.push_back({{"schema_version", "1"},
                    {"run_id", run_id},
                    {"git_commit", "0123abcd"},
                    {"gpu_name", gpu},
                    {"sm_count", std::to_string(sms)},
                    {"cc", "9.0"},
                    {"sm_clock_probed_mhz", "1755"},
                    {"notes", "synthetic, \"test\" data"}});
  }

  /// A grouped-GEMM row timed at `time_s`, SM clock `mhz`.
  void add_gemm(const std::string& run_id, std::int64_t config_id, const std::vector<std::int64_t>& c, std::int64_t k,
                std::int64_t n, double time_s, double mhz, bool heldout, const std::string& status = "ok",
                const std::string& impl = "vk_mma_sync", const std::string& family = "grouped_gemm") {
    std::string enc;
    for (std::size_t i = 0; i < c.size(); ++i) {
      if (i) enc += ' ';
      enc += std::to_string(c[i]);
    }
    counts.push_back(
        {{"schema_version", "1"}, {"run_id", run_id}, {"config_id", std::to_string(config_id)}, {"counts", enc}});
    meas.push_back({{"schema_version", "1"},
                    {"run_id", run_id},
                    {"config_id", std::to_string(config_id)},
                    {"heldout", heldout ? "1" : "0"},
                    {"kernel_family", family},
                    {"impl", impl},
                    {"impl_config", "BM128_BN128_BK32_S3"},
                    {"dtype_in", "bf16"},
                    {"dtype_out", "bf16"},
                    {"num_experts_local", std::to_string(c.size())},
                    {"K", std::to_string(k)},
                    {"N", std::to_string(n)},
                    {"bytes_min", "1"},
                    {"l2_mode", "cold"},
                    {"timing_method", "events_cold_l2"},
                    {"time_us_median", fmt::format("{}", time_s * 1e6)},
                    {"sm_clock_mhz_before", fmt::format("{}", mhz)},
                    {"sm_clock_mhz_after", fmt::format("{}", mhz)},
                    {"clock_drift_flag", "0"},
                    {"status", status},
                    {"notes", "m,mixed \"notes\""}});
  }

  void add_routing(const std::string& run_id, std::int64_t config_id, const std::string& impl, double bytes,
                   double time_s, bool heldout) {
    meas.push_back({{"schema_version", "1"},
                    {"run_id", run_id},
                    {"config_id", std::to_string(config_id)},
                    {"heldout", heldout ? "1" : "0"},
                    {"kernel_family", "routing"},
                    {"impl", impl},
                    {"impl_config", ""},
                    {"dtype_in", "fp32"},
                    {"dtype_out", "fp32"},
                    {"K", "0"},
                    {"N", "0"},
                    {"bytes_min", fmt::format("{}", bytes)},
                    {"l2_mode", "cold"},
                    {"timing_method", "events_cold_l2"},
                    {"time_us_median", fmt::format("{}", time_s * 1e6)},
                    {"sm_clock_mhz_before", "1755"},
                    {"sm_clock_mhz_after", ""},
                    {"clock_drift_flag", "0"},
                    {"status", "ok"}});
  }

  std::string write() const {
    write_csv(dir / "runs.csv", runs_columns(), runs);
    write_csv(dir / "measurements.csv", meas_cols, meas);
    write_csv(dir / "counts.csv", {"schema_version", "run_id", "config_id", "counts"}, counts);
    return dir.string();
  }
};

}  // namespace moesim::models::cost::testing
