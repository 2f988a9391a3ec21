#pragma once
/// \file
/// `workload: { mode: dispatch, tokens_per_rank: T }`: one MoE layer's dispatch and combine over
/// an expert-parallel group of every GPU, each timed alone on the network, as DeepEP's and
/// Megatron's dispatcher benchmarks time them (tests/test_intranode.py, test_internode.py,
/// test_low_latency.py in deepseek-ai/DeepEP).
///
/// Routing is the scenario's (token mode: every rank routes its T tokens from its own stream,
/// routing group = rank); the traffic is what the step builder would send for that layer (the
/// same byte matrices), so this measures the communication model of a training or inference step
/// in isolation. The report also gives DeepEP's logical byte counts and bandwidths, so a
/// published DeepEP figure can be compared in its own definition:
///   NVLink (intranode normal kernels): rows received by rank 0 with one row per (token, destination
///     rank) holding >= 1 of its kept experts, rank 0's own tokens included, x row bytes;
///   RDMA (internode normal kernels): rank 0's tokens x distinct destination nodes (its own node
///     included) x row bytes;
///   low-latency kernels: rank 0's kept (token, expert) selections x message bytes.
/// Row bytes: the dispatch wire format (bf16, or fp8 with one fp32 scale per 128 elements) and
/// bf16 for combine. Bandwidth = logical bytes / the collective's simulated time.

#include <cstdint>

#include "engine/scenario.hpp"

namespace moesim::engine {

struct DispatchOpReport {
  double time_us = 0;
  double payload_bytes = 0;       ///< the all-to-allv matrix total (every rank, diagonal included)
  double network_bytes = 0;       ///< bytes the plan put on the network (every flow of every phase)
  double nvl_logical_bytes = 0;   ///< DeepEP normal intranode definition, rank 0
  double rdma_logical_bytes = 0;  ///< DeepEP normal internode definition, rank 0
  double ll_logical_bytes = 0;    ///< DeepEP low-latency definition, rank 0
  double sm_floor_us = 0;         ///< deepep_normal with comm_sms: the SM-bound lower limit (0: none)
  int phases = 0;
};

struct DispatchReport {
  int ranks = 0;
  int nodes = 0;
  std::int64_t tokens_per_rank = 0;
  double drop_fraction = 0;
  double max_over_mean_load = 0;
  double mean_dest_ranks = 0;  ///< distinct destination ranks per token (rank 0), own rank included
  double mean_dest_nodes = 0;  ///< distinct destination nodes per token (rank 0), own node included
  DispatchOpReport dispatch, combine;
};

/// Throws std::invalid_argument for a scenario that is not a dispatch workload.
DispatchReport simulate_dispatch(const Scenario& s);

}  // namespace moesim::engine
