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
#include "hardware/flow_network.hpp"
#include "models/cost/cost_model.hpp"

namespace moesim::engine {

/// ComputeCosts backed by the calibrated/default kernel cost models (models/cost).
class CostModelCosts : public ComputeCosts {
 public:
  /// `linear`: element type of the linear layers' GEMMs (execution.weights_dtype); the router
  /// gate and the LM head (head_gemm) stay bf16.
  explicit CostModelCosts(models::cost::CostModel m, models::cost::DType linear = models::cost::DType::kBf16)
      : m_(std::move(m)), linear_(linear) {}
  sim::SimTime head_gemm(std::int64_t m, std::int64_t n, std::int64_t k) const override;
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
  sim::SimTime gemm_in(std::int64_t m, std::int64_t n, std::int64_t k, models::cost::DType d) const;
  models::cost::CostModel m_;
  models::cost::DType linear_ = models::cost::DType::kBf16;
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
  double compute_us = 0, dispatch_us = 0, combine_us = 0, other_comm_us = 0, data_parallel_us = 0, pipeline_us = 0,
         exposed_comm_us = 0, idle_us = 0;
  /// idle_us split by what ended the idle spans (see GpuBreakdown), averaged over GPUs.
  double wait_ep_us = 0, wait_dp_us = 0, wait_pp_us = 0, wait_other_us = 0, wait_host_us = 0, idle_tail_us = 0;
  std::uint64_t flows = 0;           ///< network flows simulated
  hw::FlowNetworkStats net_stats{};  ///< solver counters of the flow network (all zero on the analytical model)
  double payload_bytes =
      0;  ///< sum of the collectives' payloads (all-to-allv matrices with the local diagonal; buffer sizes)
  double bytes_sent = 0;      ///< bytes the collectives injected into the network (flows of every phase)
  double bytes_received = 0;  ///< bytes the network delivered
  /// Host CPU seconds of the phases after build_step (see BuiltStep::host_*; benchmarks only).
  double host_topology_s = 0, host_play_s = 0, host_check_s = 0;
};

/// The hardware plan of a collective request: the one mapping from requests to phases of flows,
/// used for the collectives of a step and for single-collective scenarios. `a2a_algo` applies to
/// all-to-allv (direct | hierarchical), `all_reduce_algo` to all-reduce (ring | tree).
hw::CollectivePlan plan_collective(const hw::Topology& topo, const CollectiveRequest& r,
                                   hw::CollectiveAlgo a2a_algo = hw::CollectiveAlgo::kDirect,
                                   hw::CollectiveAlgo all_reduce_algo = hw::CollectiveAlgo::kRing, int a2a_chunks = 1);

/// The step's collectives on the cluster network: each request is planned (plan_collective) and
/// its phases run back to back, on the shared flow network (`net`, where concurrent collectives
/// contend for links) or, with `net` null, timed by the analytical model. Keeps a per-collective
/// ledger of bytes injected and delivered for the conservation check.
class NetworkCommBackend : public CommBackend {
 public:
  NetworkCommBackend(sim::Simulation& s, const hw::Topology& topo, hw::FlowNetwork* net,
                     const std::vector<CollectiveRequest>& reqs, hw::CollectiveOptions opts,
                     hw::CollectiveAlgo a2a_algo = hw::CollectiveAlgo::kDirect,
                     hw::CollectiveAlgo all_reduce_algo = hw::CollectiveAlgo::kRing, int a2a_chunks = 1);
  void start(std::uint32_t collective_index, sim::Callback done) override;
  std::uint64_t flows() const { return flows_; }
  /// Bytes injected / delivered by the network, per collective index.
  const std::vector<double>& sent() const { return sent_; }
  const std::vector<double>& received() const { return received_; }
  double total_sent() const;
  double total_received() const;

 private:
  struct Run {
    std::vector<hw::FlowBatch> phases;
    std::vector<std::uint32_t> repeat;
    std::size_t next = 0;
    std::uint32_t repeats_done = 0;  ///< of phases[next]
    std::uint32_t collective = 0;
    sim::Callback done;
    sim::SimTime not_before{};  ///< start + the request's min_time
  };
  void next_phase(std::uint32_t slot);
  sim::Simulation& sim_;
  const hw::Topology& topo_;
  hw::FlowNetwork* net_;
  const std::vector<CollectiveRequest>& reqs_;
  hw::CollectiveOptions opts_;
  hw::CollectiveAlgo a2a_algo_, all_reduce_algo_;
  int a2a_chunks_;
  std::vector<Run> runs_;  // collectives in flight (slots reused)
  std::vector<std::uint32_t> free_;
  std::uint64_t flows_ = 0;
  std::vector<double> sent_, received_;
};

/// End-of-run conservation checks; throws sim::SimulationError naming the first violations:
///   tokens, per MoE layer: routed = kept + dropped, and the rows given to the forward (and, in
///   training, backward) expert GEMMs = rows kept (+ capacity padding); the step totals agree;
///   bytes, per collective: bytes injected into the network = bytes delivered.
/// (That every op ran and the event queue drained is checked by Executor::run.)
void check_conservation(const BuiltStep& b, const std::vector<double>& bytes_sent,
                        const std::vector<double>& bytes_received);

/// The options a scenario's own sections ask for (execution: profile, overlap chunks, SMs per
/// all-to-all, dispatch dtype; cluster: HBM capacity). `moesim run`, the planner and the benches
/// all start from this, so they simulate and estimate memory the same way.
/// Host time per simulated op of an eager training step (execution.host_op_cost when unset):
/// one global value fitted once on the 20 calibration points of the train and train-fp8
/// categories of validation/published (grid 0-400 us in 25-50 us steps, minimum calibration MAPE
/// at 250 us; docs/STATUS.md has the table). About 25 simulated ops per MoE layer forward and
/// backward: ~6 ms of host time per layer and micro-batch, hidden whenever the GPU's kernels are
/// longer.
inline constexpr sim::SimTime kDefaultTrainHostOpCost = sim::SimTime::from_ps(250'000'000);
SimulateOptions simulate_options(const Scenario& s);

/// Simulates one step of a train/prefill/decode scenario. Throws sim::SimulationError when an
/// end-of-run conservation check fails (ops not run, events left, tokens or bytes not conserved).
StepReport simulate_step(const Scenario& s, const SimulateOptions& opts);

}  // namespace moesim::engine
