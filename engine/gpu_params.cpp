#include "engine/gpu_params.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "config/reader.hpp"

namespace moesim::engine {

models::cost::GpuParams gpu_params(const hw::GpuSpec& g) {
  if (g.tensor_clock_hz <= 0)
    throw std::invalid_argument(
        fmt::format("GPU '{}' has no tensor_clock in the catalog (the clock its peak FLOP/s are quoted at); add it to "
                    "hardware/catalog/gpus.yaml",
                    g.name));
  models::cost::GpuParams p;
  p.name = g.name;
  p.sm_count = g.sm_count;
  p.sm_clock_hz = g.tensor_clock_hz;
  p.peak_flops_fp8 = g.fp8_flops;
  p.peak_flops_bf16 = g.bf16_flops;
  p.peak_flops_tf32 = g.tf32_flops;
  p.peak_flops_fp32 = g.fp32_flops;
  p.hbm_bytes_per_s = g.hbm_bandwidth;
  p.l2_bytes = g.l2_bytes;
  p.launch_overhead = g.kernel_launch_overhead;
  return p;
}

const hw::GpuSpec& find_gpu(const std::string& name, const std::string& where) {
  static const hw::GpuCatalog catalog = hw::load_default_gpu_catalog();
  std::vector<std::string> names;
  for (const auto& g : catalog.gpus) {
    if (g.name == name) return g;
    names.push_back(g.name);
  }
  std::string msg = fmt::format("unknown GPU '{}'", name);
  if (auto d = config::did_you_mean(name, names)) msg += fmt::format(" (did you mean '{}'?)", *d);
  msg += "; `moesim describe gpus` lists the catalog";
  throw config::ConfigError({config::Diagnostic{config::Location{where, 0, 0}, "gpu", msg}});
}

}  // namespace moesim::engine
