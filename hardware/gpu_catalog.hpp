#pragma once
/// \file
/// GPU catalog: per-SKU peak rates, memory and interconnect figures, loaded from YAML data
/// (hardware/catalog/gpus.yaml) in which every entry cites its source. Presets are data, not
/// classes, so adding a GPU is an edit to the YAML file.

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "sim/time.hpp"

namespace moesim::config {
class Node;
}

namespace moesim::hw {

/// One GPU model. Rates are dense (no structured sparsity) peak figures, as the datasheets
/// print them; a value of 0 means "not supported" (A100 has no FP8 tensor cores).
struct GpuSpec {
  std::string name;         ///< catalog key, e.g. "h100-sxm"
  std::string description;  ///< marketing name
  double fp8_flops = 0;     ///< FLOP/s
  double bf16_flops = 0;
  double tf32_flops = 0;
  double fp32_flops = 0;
  double hbm_bytes = 0;      ///< bytes
  double hbm_bandwidth = 0;  ///< bytes/s
  int sm_count = 0;
  double l2_bytes = 0;
  double nvlink_bandwidth = 0;  ///< bytes/s per GPU per direction (0: no NVLink)
  int pcie_generation = 0;
  double pcie_bandwidth = 0;  ///< bytes/s per direction, x16
  sim::SimTime kernel_launch_overhead{};
  /// SM clock at which the peak_dense figures are quoted (0: not given). Cost-model
  /// calibration rescales compute rates by measured clock / this clock.
  double tensor_clock_hz = 0;
  std::string source;  ///< citation(s)
};

struct GpuCatalog {
  std::vector<GpuSpec> gpus;  ///< in file order
  const GpuSpec* find(const std::string& name) const;
  std::vector<std::string> names() const;
};

/// Reads one GPU spec from a map node (catalog entry or an inline `cluster.gpu:` block).
GpuSpec parse_gpu_spec(const std::string& name, const config::Node& node);
/// Reads a catalog document whose root has a `gpus:` map of name -> spec. Problems go to the
/// node's Diagnostics (the caller throws).
GpuCatalog parse_gpu_catalog(const config::Node& root);
/// Loads and parses a catalog file; throws config::ConfigError with file:line:col.
GpuCatalog load_gpu_catalog(const std::string& path);
/// Directory holding the catalog YAML files: $MOESIM_DATA_DIR if set, else
/// <source dir>/hardware/catalog (compile definition MOESIM_SOURCE_DIR).
std::string catalog_dir();
/// load_gpu_catalog(catalog_dir() + "/gpus.yaml").
GpuCatalog load_default_gpu_catalog();

/// The `moesim describe gpus` table.
void describe_gpus(std::ostream& os, const GpuCatalog& catalog);
/// Every field of one GPU (`moesim describe gpu NAME`), with its source.
void describe_gpu(std::ostream& os, const GpuSpec& gpu);

}  // namespace moesim::hw
