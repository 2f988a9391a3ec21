#include "hardware/memory.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace moesim::hw {

std::string_view to_string(MemCategory c) {
  switch (c) {
    case MemCategory::kWeights:
      return "weights";
    case MemCategory::kGradients:
      return "gradients";
    case MemCategory::kOptimizer:
      return "optimizer";
    case MemCategory::kActivations:
      return "activations";
    case MemCategory::kKvCache:
      return "kv_cache";
    case MemCategory::kCommBuffers:
      return "comm_buffers";
    case MemCategory::kOther:
      return "other";
  }
  return "?";
}

MemoryLedger::MemoryLedger(int gpus, double capacity_bytes) : capacity_(capacity_bytes) {
  if (gpus < 1) throw std::invalid_argument("MemoryLedger: need at least one GPU");
  if (!(capacity_bytes > 0)) throw std::invalid_argument("MemoryLedger: capacity must be > 0");
  gpus_.resize(static_cast<std::size_t>(gpus));
}

MemoryLedger::Gpu& MemoryLedger::gpu(int g) {
  if (g < 0 || g >= gpus()) throw std::out_of_range("MemoryLedger: GPU " + std::to_string(g) + " out of range");
  return gpus_[static_cast<std::size_t>(g)];
}

void MemoryLedger::alloc(int g, MemCategory c, double bytes) {
  if (!(bytes >= 0) || !std::isfinite(bytes)) throw std::invalid_argument("MemoryLedger::alloc: bytes must be >= 0");
  Gpu& x = gpu(g);
  x.in_use += bytes;
  x.by_cat[static_cast<std::size_t>(c)] += bytes;
  if (x.in_use > x.peak) {
    x.peak = x.in_use;
    x.at_peak = x.by_cat;
  }
}

void MemoryLedger::free(int g, MemCategory c, double bytes) {
  if (!(bytes >= 0) || !std::isfinite(bytes)) throw std::invalid_argument("MemoryLedger::free: bytes must be >= 0");
  Gpu& x = gpu(g);
  double& cat = x.by_cat[static_cast<std::size_t>(c)];
  // Relative slack for sums of doubles that should cancel exactly.
  if (bytes > cat * (1 + 1e-12) + 1e-6)
    throw MemoryAccountingError("MemoryLedger::free: GPU " + std::to_string(g) + " frees " + std::to_string(bytes) +
                                " B of " + std::string(to_string(c)) + " but holds " + std::to_string(cat) + " B");
  cat = std::max(0.0, cat - bytes);
  x.in_use = std::max(0.0, x.in_use - bytes);
}

void MemoryLedger::alloc_all(MemCategory c, double bytes) {
  for (int g = 0; g < gpus(); ++g) alloc(g, c, bytes);
}

double MemoryLedger::max_peak() const { return gpus_[static_cast<std::size_t>(max_peak_gpu())].peak; }

int MemoryLedger::max_peak_gpu() const {
  int best = 0;
  for (int g = 1; g < gpus(); ++g)
    if (gpus_[static_cast<std::size_t>(g)].peak > gpus_[static_cast<std::size_t>(best)].peak) best = g;
  return best;
}

}  // namespace moesim::hw
