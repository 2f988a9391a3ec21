#pragma once
/// \file
/// Bridges the hardware catalog to the kernel cost models (models/cost knows no catalog).

#include "hardware/gpu_catalog.hpp"
#include "models/cost/cost_model.hpp"

namespace moesim::engine {

/// Cost-model inputs from a catalog GPU. Throws std::invalid_argument when the entry lacks a
/// figure the cost model needs (e.g. tensor_clock), naming the GPU and the key.
models::cost::GpuParams gpu_params(const hw::GpuSpec& gpu);

/// Looks up `name` in the default catalog; throws config::ConfigError (with a did-you-mean)
/// located at `where` when unknown.
const hw::GpuSpec& find_gpu(const std::string& name, const std::string& where);

}  // namespace moesim::engine
