// The measuring side of vk_harness (internal header shared by runner*.cpp): the Runner owns the
// device, the libraries, the buffer pools and the CSV writers; each family's file adds its run_*.
#pragma once

#include <cuda_runtime.h>

#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "validation_kernels/harness/checks.hpp"
#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/device.hpp"
#include "validation_kernels/harness/dl.hpp"
#include "validation_kernels/harness/grid.hpp"
#include "validation_kernels/harness/options.hpp"
#include "validation_kernels/harness/timing.hpp"
#include "validation_kernels/kernels/kernels.hpp"

namespace moesim::vk {

using Launch = std::function<cudaError_t()>;

/// What a correctness check found (the runner writes it as max_rel_err / notes).
struct CheckResult {
  bool ok = false;
  double err = NAN;
  std::string note;
};

/// Set by the SIGTERM/SIGINT handler; the run stops between configurations.
extern volatile std::sig_atomic_t g_interrupted;

class Runner {
 public:
  Runner(const HarnessOptions& o, std::vector<Config> grid);
  int run();

  // ---- shared helpers (runner.cpp) ----
  Device& dev() { return dev_; }
  const HarnessOptions& opt() const { return o_; }
  Cublas& cublas() { return cublas_; }
  const Nvml& nvml() const { return nvml_; }
  /// measurements.csv columns every family shares, for one configuration.
  CsvRow base_row(const Config& c) const;
  void write_rows(const CsvRow& base, const std::string& impl, const std::string& impl_config,
                  const std::string& status, double err, const std::vector<Timing>& timings, const std::string& notes);
  /// Check, then (when it passes) time one implementation and write its rows. A failed check
  /// writes a failed_check row, disables the impl for the rest of the run and invalidates the rows
  /// it already wrote; a synchronous CUDA error writes an `error` row.
  void measure(const Config& c, const CsvRow& base, const std::string& impl, const std::string& impl_config,
               const Launch& launch, const std::function<CheckResult()>& check);
  /// false (with the reason) when the impl was skipped by option, failed its self-test or a check.
  bool enabled(const std::string& impl, std::string* why = nullptr) const;
  void disable(const std::string& impl, const std::string& why, bool invalidate_rows);
  std::vector<Timing> time_launch(const Launch& launch);
  double clock_mhz();
  int sms() const { return dev_.sms(); }
  bool hopper() const;

  // ---- families ----
  void run_gemm(const Config& c);         // grouped (contiguous, masked) and dense, bf16
  void run_gemm_fp8(const Config& c);     // grouped fp8 block-scaled
  void run_routing(const Config& c);      // runner_routing.cpp
  void run_attention(const Config& c);    // runner_attention.cpp
  void run_elementwise(const Config& c);  // runner_elementwise.cpp
  void selftest();                        // runner_gemm.cpp

  // ---- GEMM buffer pools (runner_gemm.cpp) ----
  struct Pools {
    gpu::bf16 *a = nullptr, *w = nullptr, *c = nullptr;
    size_t a_elems = 0, w_elems = 0, c_elems = 0;
    uint8_t *a8 = nullptr, *w8 = nullptr;
    float *a_scale = nullptr, *w_scale = nullptr;
    size_t a8_elems = 0, w8_elems = 0, a_scale_elems = 0, w_scale_elems = 0;
    int* ints = nullptr;  ///< 4 x 1024 small per-config int arrays
    void** ptrs = nullptr;
    float* ref = nullptr;
    size_t ref_elems = 0;
  };
  Pools& pools() { return pools_; }
  void alloc_pools();
  /// Row pitch of the fp8 activation-scale pool: a_scale[kb * a_scale_ld + row].
  int64_t a_scale_ld() const { return a_scale_ld_; }

 private:
  void probes(CsvRow& run_row);
  void write_runs_csv();
  [[noreturn]] void fatal(const std::string& why);
  void finish_files();
  void dispatch(const Config& c);

  const HarnessOptions& o_;
  std::vector<Config> grid_;
  Device dev_;
  Cublas cublas_;
  Nvml nvml_;
  Pools pools_;
  int64_t a_scale_ld_ = 1;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  uint32_t flush_value_ = 1;
  unsigned long long* d_clock_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::unique_ptr<CsvWriter> meas_, counts_, selftest_;
  CsvRow run_row_;
  int64_t order_index_ = 0;
  int64_t done_ = 0, skipped_budget_ = 0;
  std::string run_status_ = "running";
  std::map<std::string, std::string> disabled_;  ///< impl -> why
  std::set<std::string> invalidate_;             ///< impls whose ok rows become `invalidated`
  std::set<std::string> failed_;                 ///< impls disabled by a failure (for --skip-file)
  std::vector<std::string> selftest_failed_;
  // What is running now (for the fatal handler's error row).
  const Config* cur_config_ = nullptr;
  std::string cur_impl_, cur_phase_;
  CsvRow cur_base_;
  double t0_ = 0;
  double last_runs_write_ = 0;
  friend class SelftestRecorder;

 public:
  /// Set around a measurement so the fatal handler can name it.
  void set_current(const Config* c, const CsvRow* base, const std::string& impl, const std::string& phase) {
    cur_config_ = c;
    if (base) cur_base_ = *base;
    cur_impl_ = impl;
    cur_phase_ = phase;
  }
  CsvWriter& selftest_writer() { return *selftest_; }
  void note_selftest_failure(const std::string& impl) { selftest_failed_.push_back(impl); }
};

/// bf16 bit patterns <-> float on the host (no CUDA headers needed for the arithmetic).
inline float bf16f(uint16_t b) { return bf16_bits_to_float(b); }

}  // namespace moesim::vk
