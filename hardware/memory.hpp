#pragma once
/// \file
/// Per-GPU HBM accounting: every allocation is tagged with a category so a report can say
/// what filled the memory at the peak, and whether the plan fits.
///
/// Why a ledger rather than a formula: weights, optimizer states and KV cache are static, but
/// activations and communication buffers come and go over a step; the executor allocates and
/// frees as it simulates, and the peak (not the sum) decides whether a deployment fits.

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moesim::hw {

enum class MemCategory : std::uint8_t {
  kWeights,
  kGradients,
  kOptimizer,
  kActivations,
  kKvCache,
  kCommBuffers,
  kOther,
};
inline constexpr std::size_t kMemCategories = 7;
std::string_view to_string(MemCategory c);

/// Raised on freeing more than was allocated (a bookkeeping bug in the caller).
class MemoryAccountingError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

class MemoryLedger {
 public:
  /// `capacity_bytes`: usable HBM per GPU (GpuSpec::hbm_bytes, possibly minus a reserve).
  MemoryLedger(int gpus, double capacity_bytes);

  void alloc(int gpu, MemCategory c, double bytes);
  void free(int gpu, MemCategory c, double bytes);
  /// Same allocation on every GPU (replicated weights, optimizer shards of equal size).
  void alloc_all(MemCategory c, double bytes);

  int gpus() const { return static_cast<int>(gpus_.size()); }
  double capacity() const { return capacity_; }
  double in_use(int gpu) const { return gpus_.at(static_cast<std::size_t>(gpu)).in_use; }
  double in_use(int gpu, MemCategory c) const {
    return gpus_.at(static_cast<std::size_t>(gpu)).by_cat[static_cast<std::size_t>(c)];
  }
  double peak(int gpu) const { return gpus_.at(static_cast<std::size_t>(gpu)).peak; }
  /// Usage per category at the moment of that GPU's peak.
  const std::array<double, kMemCategories>& at_peak(int gpu) const {
    return gpus_.at(static_cast<std::size_t>(gpu)).at_peak;
  }
  /// Largest peak over GPUs, and the GPU that has it (lowest index on ties).
  double max_peak() const;
  int max_peak_gpu() const;
  /// True when every GPU's peak is within capacity.
  bool fits() const { return max_peak() <= capacity_; }

 private:
  struct Gpu {
    double in_use = 0;
    double peak = 0;
    std::array<double, kMemCategories> by_cat{};
    std::array<double, kMemCategories> at_peak{};
  };
  Gpu& gpu(int g);
  double capacity_;
  std::vector<Gpu> gpus_;
};

}  // namespace moesim::hw
