#include "hardware/gpu_catalog.hpp"

#include <fmt/format.h>
#include <cstdlib>
#include <ostream>

#include "config/reader.hpp"
#include "sim/units.hpp"

#ifndef MOESIM_SOURCE_DIR
#define MOESIM_SOURCE_DIR "."
#endif

namespace moesim::hw {

const GpuSpec* GpuCatalog::find(const std::string& name) const {
  for (const auto& g : gpus)
    if (g.name == name) return &g;
  return nullptr;
}

std::vector<std::string> GpuCatalog::names() const {
  std::vector<std::string> out;
  for (const auto& g : gpus) out.push_back(g.name);
  return out;
}

GpuSpec parse_gpu_spec(const std::string& name, const config::Node& n) {
  using config::Range;
  GpuSpec g;
  g.name = name;
  if (!n.is_map()) {
    n.error("a GPU spec must be a map (description, peak_dense, hbm_capacity, ...)");
    return g;
  }
  g.description = n.opt_string("description", name);
  const config::Node peak = n.child("peak_dense");
  if (!peak.defined()) {
    n.error_at("peak_dense", "missing required key (map of fp8/bf16/tf32/fp32 dense peak rates)");
  } else {
    auto rate = [&](const char* k, bool required) -> double {
      if (required) return peak.req_flop_rate(k).flops;
      auto v = peak.opt_flop_rate(k);
      return v ? v->flops : 0.0;
    };
    g.fp8_flops = rate("fp8", false);
    g.bf16_flops = rate("bf16", true);
    g.tf32_flops = rate("tf32", false);
    g.fp32_flops = rate("fp32", true);
    peak.finish();
  }
  g.hbm_bytes = n.req_bytes("hbm_capacity").value;
  g.hbm_bandwidth = n.req_bandwidth("hbm_bandwidth").bytes_per_s;
  g.sm_count = static_cast<int>(n.req_int("sm_count", Range::between(1, 1 << 20)));
  g.l2_bytes = n.req_bytes("l2_cache").value;
  if (auto v = n.opt_bandwidth("nvlink_bandwidth")) g.nvlink_bandwidth = v->bytes_per_s;
  const config::Node pcie = n.child("pcie");
  if (!pcie.defined()) {
    n.error_at("pcie", "missing required key ({generation: N, bandwidth: 64GB/s})");
  } else {
    g.pcie_generation = static_cast<int>(pcie.req_int("generation", Range::between(1, 7)));
    g.pcie_bandwidth = pcie.req_bandwidth("bandwidth").bytes_per_s;
    pcie.finish();
  }
  g.kernel_launch_overhead = n.req_time("kernel_launch_overhead");
  if (auto f = n.opt_frequency("tensor_clock")) g.tensor_clock_hz = *f;
  g.source = n.opt_string("source", "");
  n.finish();
  return g;
}

GpuCatalog parse_gpu_catalog(const config::Node& root) {
  GpuCatalog cat;
  const config::Node gpus = root.child("gpus");
  if (!gpus.defined() || !gpus.is_map()) {
    root.error_at("gpus", "a GPU catalog needs a `gpus:` map of name -> spec");
    return cat;
  }
  for (const auto& [name, node] : gpus.entries()) cat.gpus.push_back(parse_gpu_spec(name, node));
  root.finish();
  return cat;
}

GpuCatalog load_gpu_catalog(const std::string& path) {
  const auto doc = config::Document::load_file(path);
  config::Diagnostics diags;
  GpuCatalog cat = parse_gpu_catalog(doc.root(diags));
  diags.throw_if_any();
  return cat;
}

std::string catalog_dir() {
  if (const char* d = std::getenv("MOESIM_DATA_DIR"); d && *d) return d;
  return std::string(MOESIM_SOURCE_DIR) + "/hardware/catalog";
}

GpuCatalog load_default_gpu_catalog() { return load_gpu_catalog(catalog_dir() + "/gpus.yaml"); }

void describe_gpus(std::ostream& os, const GpuCatalog& catalog) {
  auto tf = [](double f) { return f > 0 ? fmt::format("{:.1f}", f / 1e12) : std::string("-"); };
  os << fmt::format("{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>4} {:>7} {:>10} {:>5} {:>7}\n", "name", "fp8",
                    "bf16", "tf32", "fp32", "HBM", "HBM bw", "SMs", "L2", "NVLink/dir", "PCIe", "launch");
  os << fmt::format("{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>4} {:>7} {:>10} {:>5} {:>7}\n", "", "TFLOPS",
                    "TFLOPS", "TFLOPS", "TFLOPS", "", "", "", "", "", "gen", "");
  for (const auto& g : catalog.gpus) {
    os << fmt::format("{:<14} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>4} {:>7} {:>10} {:>5} {:>7}\n", g.name,
                      tf(g.fp8_flops), tf(g.bf16_flops), tf(g.tf32_flops), tf(g.fp32_flops),
                      sim::format_bytes(g.hbm_bytes), sim::format_bandwidth(g.hbm_bandwidth), g.sm_count,
                      sim::format_bytes(g.l2_bytes),
                      g.nvlink_bandwidth > 0 ? sim::format_bandwidth(g.nvlink_bandwidth) : std::string("-"),
                      g.pcie_generation, sim::to_string(g.kernel_launch_overhead));
  }
  os << "\nPeak rates are dense (no 2:4 sparsity). NVLink is per GPU, per direction.\nSources:\n";
  for (const auto& g : catalog.gpus) os << fmt::format("  {}: {} -- {}\n", g.name, g.description, g.source);
}

void describe_gpu(std::ostream& os, const GpuSpec& g) {
  auto tf = [](double f) { return f > 0 ? fmt::format("{:.1f} TFLOPS", f / 1e12) : std::string("- (not supported)"); };
  auto row = [&os](const char* key, const std::string& v) { os << fmt::format("  {:<24} {}\n", key, v); };
  os << fmt::format("{} ({})\n", g.name, g.description);
  row("fp8 dense", tf(g.fp8_flops));
  row("bf16 dense", tf(g.bf16_flops));
  row("tf32 dense", tf(g.tf32_flops));
  row("fp32", tf(g.fp32_flops));
  row("HBM capacity", sim::format_bytes(g.hbm_bytes));
  row("HBM bandwidth", sim::format_bandwidth(g.hbm_bandwidth));
  row("SMs", fmt::format("{}", g.sm_count));
  row("L2", sim::format_bytes(g.l2_bytes));
  row("NVLink per direction", g.nvlink_bandwidth > 0 ? sim::format_bandwidth(g.nvlink_bandwidth) : "- (none)");
  row("PCIe", fmt::format("Gen{} x16, {} per direction", g.pcie_generation, sim::format_bandwidth(g.pcie_bandwidth)));
  row("kernel launch overhead", sim::to_string(g.kernel_launch_overhead));
  if (g.tensor_clock_hz > 0) row("tensor clock", fmt::format("{:.0f} MHz", g.tensor_clock_hz / 1e6));
  os << fmt::format("  source: {}\n", g.source);
}

}  // namespace moesim::hw
