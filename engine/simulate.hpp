#pragma once
/// \file
/// One simulated step end to end: scenario -> routing sample -> step graph -> executor on the
/// cluster's flow network with kernel cost models -> report.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/compute_costs.hpp"
#include "engine/executor.hpp"
#include "engine/scenario.hpp"
#include "engine/step_builder.hpp"
#include "hardware/collectives.hpp"
#include "models/cost/cost_model.hpp"

namespace moesim::engine {

/// ComputeCosts backed by the calibrated/default kernel cost models (models/cost).
class CostModelCosts : public ComputeCosts {
 public:
  explicit CostModelCosts(models::cost::CostModel m) : m_(std::move(m)) {}
  sim::SimTime dense_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const override;
  sim::SimTime grouped_gemm(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const override;
  /// Weight gradient dW_e[K,N] = X_e^T dY_e: one GEMM per active expert with inner size m_e,
  /// issued as one launch (the per-expert launch overheads after the first are not charged).
  sim::SimTime grouped_gemm_wgrad(const std::vector<std::int64_t>& rows, std::int64_t k, std::int64_t n) const override;
  sim::SimTime attention(const AttentionShape& a) const override;
  sim::SimTime router_topk(std::int64_t tokens, std::int64_t hidden, int experts, int top_k) const override;
  sim::SimTime permute(std::int64_t rows, std::int64_t row_bytes) const override;
  sim::SimTime unpermute(std::int64_t rows, std::int64_t row_bytes) const override;
  sim::SimTime elementwise(double bytes) const override;

 private:
  models::cost::CostModel m_;
};

struct SimulateOptions {
  std::string trace_file;    ///< Chrome trace output ("" = none)
  std::string profile_file;  ///< fitted cost profile YAML ("" = catalog defaults)
  StepBuildOptions build;    ///< overlap chunks, wire formats, SMs taken by all-to-all...
};

struct StepReport {
  BuiltStep built;
  ExecutionResult exec;
  double tokens_per_step = 0;
  double tokens_per_s = 0;
  double mfu = 0;  ///< model FLOPs / (step time x GPUs x bf16 peak)
  /// Breakdown averaged over GPUs (microseconds).
  double compute_us = 0, dispatch_us = 0, combine_us = 0, other_comm_us = 0, exposed_comm_us = 0, idle_us = 0;
  std::uint64_t flows = 0;    ///< network flows simulated
  double bytes_sent = 0;      ///< collective payload injected
  double bytes_received = 0;  ///< collective payload delivered
};

/// The hardware plan of a collective request: the one mapping from requests to phases of flows,
/// used for the collectives of a step and for single-collective scenarios. `a2a_algo` applies to
/// all-to-allv (direct | hierarchical), `all_reduce_algo` to all-reduce (ring | tree).
hw::CollectivePlan plan_collective(const hw::Topology& topo, const CollectiveRequest& r,
                                   hw::CollectiveAlgo a2a_algo = hw::CollectiveAlgo::kDirect,
                                   hw::CollectiveAlgo all_reduce_algo = hw::CollectiveAlgo::kRing);

/// Simulates one step of a train/prefill/decode scenario. Throws sim::SimulationError when an
/// end-of-run conservation check fails (ops not run, events left, bytes not delivered).
StepReport simulate_step(const Scenario& s, const SimulateOptions& opts);

}  // namespace moesim::engine
