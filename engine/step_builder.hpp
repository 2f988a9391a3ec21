#pragma once
/// \file
/// Scenario -> one training or inference step as a StepGraph, plus the collectives it needs.
///
/// What one step contains (Megatron-Core semantics; see memory_model.hpp for the rank layout):
///   forward per layer and micro-batch: qkv GEMM(s), flash attention, o_proj GEMM, TP all-reduce
///   (tp > 1); MoE layers: router + top-k, permute, dispatch all-to-allv over the EP group (bytes
///   from that layer's routing sample on each rank), shared experts (depend only on the attention
///   output, so they overlap the dispatch), grouped GEMMs with each GPU's real per-local-expert
///   rows (fc1 with N doubled for gated activations, fc2), combine all-to-allv, unpermute; with
///   tp > 1 every GPU routes tokens/tp (sequence-parallel split) and the outputs are all-gathered.
///   Dense layers: fc1, fc2 GEMMs and a TP all-reduce.
///   `overlap_chunks` c splits dispatch / expert GEMMs / combine into c pipelined chunks.
///   training: backward per layer in reverse (dgrad + wgrad GEMMs; combine-backward all-to-all,
///   expert dgrads, dispatch-backward, wgrads overlapping it); full-layer recomputation before each
///   layer's backward when workload.recompute, or the listed modules' forward kernels only with
///   selective recompute (recompute_selective); memory-bound kernels (norm, rope, ffn_act,
///   shared_act, expert_act and their .bwd) charged at HBM bandwidth; in the last micro-batch's backward each layer's
///   gradients are reduced (reduce-scatter with the distributed optimizer, else all-reduce) right
///   after its backward: dense params over the DP group (same stage and TP index), expert params
///   over the expert-data-parallel group (same stage and EP index); then the optimizer step
///   (elementwise, optimizer_bytes_per_param of HBM traffic per local param) and, with the
///   distributed optimizer, a parameter all-gather. PP: 1F1B over micro-batches, or Megatron's
///   interleaved 1F1B over pp x vpp model chunks (pipeline.hpp: pipeline_schedule) with
///   send/recv of activations (forward) and gradients (backward) between virtual stages; a
///   receive is queued only in the sender's stream order (posted ahead). Every op carries
///   host_op_cost of host time and every forward router is a host sync (executor.hpp).
///   prefill: forward only, one micro-batch; decode: forward only, q_len 1, KV-cache reads.
///
/// Routing: one models::route_layer call per MoE layer with RouteRequest{tokens = tokens per GPU,
/// groups = micro_batches x GPUs of the layer's stage, step = options.step, seed = scenario.seed,
/// keep_assignments = false}; group index = micro_batch * stage_size + local rank, so each
/// (layer, micro-batch, rank) draws from its own named stream and results are independent of build
/// order. With tp = 1 these are exactly the routing groups of a routing-only run.
///
/// Streams: EP all-to-alls and TP collectives go to the EP/TP communication stream, DP gradient
/// reductions and parameter all-gathers to the DP stream, pipeline send/recv to the PP stream
/// (separate NCCL communicators), so a long reduce-scatter does not delay the next layer's
/// dispatch; they still share links in the network model.
///
/// Simplifications (stated, not hidden): embedding/LM-head vocab-parallel all-reduces omitted;
/// inference uses a single micro-batch per step; MLA decode runs the un-absorbed projections;
/// redundant (replicated) experts are rejected.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/compute_costs.hpp"
#include "engine/executor.hpp"
#include "engine/memory_model.hpp"
#include "engine/scenario.hpp"
#include "models/placement.hpp"
#include "models/router.hpp"

namespace moesim::engine {

enum class CollectiveKind : std::uint8_t { kAllToAllV, kAllReduce, kReduceScatter, kAllGather, kSendRecv };
const char* to_string(CollectiveKind k);

/// One collective of the step, indexed by the collective_index used in StepGraph::collective.
struct CollectiveRequest {
  CollectiveKind kind = CollectiveKind::kAllToAllV;
  std::vector<int> gpus;  ///< global ranks, in group order (matrix rows/cols follow this order)
  /// all-to-allv: row-major [src * G + dst] bytes over `gpus` (diagonal = local copy). Shared
  /// between the forward and backward collectives that move the same rows.
  std::shared_ptr<const std::vector<double>> matrix;
  bool transpose = false;  ///< use matrix[dst * G + src] (backward reuses the forward matrix)
  double scale = 1.0;      ///< fraction carried by this chunk (1 / overlap_chunks)
  /// Bytes the network carries per byte moved (>= 1): an implementation that reaches only a
  /// fraction f of the link rates plays 1/f (deepep_normal's kernel efficiency). Timing only:
  /// total_bytes() and the reports count the bytes moved.
  double wire_inflation = 1.0;
  /// The collective lasts at least this long from its start (an SM-bound kernel: deepep_normal
  /// with comm_sms, kDeepepSmCopyBandwidth).
  sim::SimTime min_time{};
  /// Non-all-to-all: the buffer size on each rank, as nccl-tests' "size": all-reduce and
  /// reduce-scatter input, all-gather output, send/recv message (gpus = {sender, receiver}).
  double bytes = 0;
  Category category = Category::kOtherComm;
  int layer = -1;
  int micro_batch = -1;
  bool backward = false;
  int group_size() const { return static_cast<int>(gpus.size()); }
  /// Bytes src -> dst (indices into gpus) of an all-to-allv.
  double at(int src, int dst) const;
  /// All-to-allv: sum of the (scaled) matrix; others: bytes.
  double total_bytes() const;
};

/// Who moves dispatch/combine tokens (ExecutionSpec::dispatcher documents the three).
enum class Dispatcher { kNcclA2a, kDeepepNormal, kDeepepLl };

/// Fraction of the link rates (NVLink and NIC, after the fabrics' own efficiencies) that DeepEP's
/// normal kernels reach: their copies run on a fixed SM budget (24 SMs in DeepEP's benchmarks) in
/// chunks with per-chunk synchronisation. Fitted once, globally: the geometric mean of
/// published / predicted (at 1.0) over the four `subset: calibration` points of category
/// comm-deepep-normal of validation/published (0.78, 0.69, 0.93, 0.91 -> 0.82); the other eight
/// points are held out. Not fitted per point, per model or per source. docs/STATUS.md has the
/// table.
inline constexpr double kDeepepNormalEfficiency = 0.82;

/// Bytes per second one SM moves through a DeepEP-family (deepep_normal) dispatch or combine
/// kernel: the sender's copies into RDMA/NVLink buffers, the relay's forwarding and the
/// receiver's copies out all run on the kernel's comm_sms SMs, so with few SMs the kernel is
/// SM-bound (HybridEP's bandwidth-vs-SM tables). Fitted once, globally, on the `subset:
/// calibration` points of category comm-hybrid-ep (grid in docs/STATUS.md); the held-out points
/// and comm-deepep-normal are reported separately.
inline constexpr double kDeepepSmCopyBandwidth = 60e9;

/// Max over ranks of (bytes sent + bytes received) of a row-major ranks x ranks byte matrix: what
/// the busiest GPU's SMs copy in a deepep_normal kernel (its SM-bound floor).
double max_handled_bytes(const std::vector<double>& m, int ranks);

struct StepBuildOptions {
  int overlap_chunks = 1;  ///< >= 1; Tutel/FSMoE pipelining degree of dispatch/GEMM/combine
  int step = 0;            ///< training step index (routing streams)
  models::WireFormat dispatch_format = models::WireFormat::kBf16;
  models::WireFormat combine_format = models::WireFormat::kBf16;
  Dispatcher dispatcher = Dispatcher::kNcclA2a;
  int gpus_per_node = 8;  ///< EP ranks -> nodes for deepep_normal (EP groups are whole nodes or inside one)
  int a2a_sm_count = 0;   ///< SMs an all-to-all kernel occupies on each participant (DeepEP: ~20)
  double sm_copy_bandwidth = kDeepepSmCopyBandwidth;  ///< bytes/s per SM in deepep_normal kernels
  bool separate_comm_streams = true;  ///< false: DP and PP traffic queue on the EP/TP stream (one comm stream)
  int grad_bytes = 4;                 ///< bytes per gradient element reduced over DP
  /// ZeRO stage (WorkloadSpec::Optimizer): 0 all-reduce of grads; 1 reduce-scatter in the last
  /// backward, sharded Adam, all-gather of params; 2 grads sharded (grad_sync: reduce-scatter in
  /// every micro-batch's backward or the last); 3 params sharded too, all-gathered before use
  /// (param_gather).
  int zero_stage = 1;
  ParamGather param_gather = ParamGather::kPerUse;
  GradSync grad_sync = GradSync::kPerMicroBatch;
  int optimizer_state_bytes = 12;  ///< master params + Adam moments, bytes per parameter
  /// Host time to issue each op (compute and collective); a MoE layer's forward router is a host
  /// sync (the dispatchers read tokens per expert on the host). Zero: no host model.
  sim::SimTime host_op_cost{};
  double optimizer_bytes_per_param = 16;  ///< Adam step HBM traffic per param
  double memory_capacity_bytes = 80.0 * 1024 * 1024 * 1024;
  /// Threads that route MoE layers in parallel (each layer draws from its own RNG streams, so the
  /// result is bit-identical for any count). `moesim run` uses the machine's cores; sweeps and the
  /// planner keep 1 because their runs already run in parallel.
  int routing_threads = 1;
};

struct FlopTotals {
  /// Useful FLOPs (MFU numerator): kept rows only, no padding, no recompute; backward = 2x
  /// forward (attention included).
  double model = 0;
  /// FLOPs of every op in the graph (padding, recomputation, flash-attention backward 2.5x).
  double executed = 0;
  std::vector<double> per_gpu_executed;
};

struct MoeLayerReport {
  int layer = 0;
  int stage = 0;
  models::LayerStats stats;       ///< over every micro-batch and GPU of the step
  double rank_max_over_mean = 0;  ///< expert rows computed per EP rank, max / mean (all groups)
  /// Dropless: rows added to round each local expert's rows (all sources, per micro-batch and EP
  /// group) up to routing.block_size; computed by the grouped GEMMs, no useful work.
  std::int64_t rows_block_padded = 0;
  /// Token conservation: rows the routing says the expert GEMMs must compute (kept, plus the
  /// padding rows when buffers are padded to capacity, plus rows_block_padded) and the rows actually given to the
  /// forward fc1 and backward fc2-dgrad grouped GEMMs of the graph (all chunks, micro-batches
  /// and ranks; recomputation not counted).
  std::int64_t rows_expected = 0;
  std::int64_t rows_fed_fwd = 0;
  std::int64_t rows_fed_bwd = 0;
};

/// Serial totals of one kernel name over all GPUs (for reports and tests).
struct KernelTotals {
  std::uint64_t count = 0;
  sim::SimTime time{};
  double flops = 0;
};

struct BuiltStep {
  explicit BuiltStep(int gpus) : graph(gpus) {}
  StepGraph graph;
  std::vector<CollectiveRequest> collectives;
  std::vector<MoeLayerReport> moe_layers;
  FlopTotals flops;
  MemoryEstimate memory;
  std::vector<std::pair<int, int>> stage_layers;
  std::uint64_t compute_ops = 0;
  std::uint64_t collective_ops = 0;
  std::vector<std::uint32_t> compute_ops_per_gpu;
  sim::SimTime serial_compute{};                ///< sum of every compute op's duration
  std::map<std::string, KernelTotals> kernels;  ///< by op name ("expert_fc1", "qkv.dgrad", ...)
  std::int64_t routed = 0, kept = 0, dropped = 0, padded = 0;
  bool training = false;  ///< the graph has a backward pass
  /// Host CPU seconds (this thread) spent routing, building the graph and estimating memory (for
  /// benchmarks; never part of a report, which must not depend on the machine).
  double host_route_s = 0, host_graph_s = 0, host_memory_s = 0;
  double drop_fraction() const { return routed > 0 ? static_cast<double>(dropped) / static_cast<double>(routed) : 0; }
  double padded_fraction() const {
    return kept + padded > 0 ? static_cast<double>(padded) / static_cast<double>(kept + padded) : 0;
  }
};

/// CPU seconds consumed by the calling thread (CLOCK_THREAD_CPUTIME_ID): the host timings of
/// BuiltStep and StepReport, which stay meaningful on a loaded machine.
double thread_cpu_seconds();

/// Throws std::invalid_argument for a scenario it cannot build (EP not dividing dp*tp or the
/// experts, tokens not splitting over tp, fewer layers than stages, redundant experts).
BuiltStep build_step(const Scenario& s, const ComputeCosts& costs, const StepBuildOptions& opt = {});

/// The memory-model options a step built with `opt` is checked against (build_step's estimate);
/// callers that only estimate memory (the planner) use it to get the same verdict.
MemoryOptions memory_options(const StepBuildOptions& opt);

/// A contention-free backend for tests and quick estimates: every collective takes
/// latency + bytes / bandwidth with the busiest rank's bytes (all-to-allv: max over ranks of bytes
/// sent or received, the diagonal excluded; ring all-reduce 2(G-1)/G * size; reduce-scatter and
/// all-gather (G-1)/G * size; send/recv size).
class SimpleCommBackend : public CommBackend {
 public:
  SimpleCommBackend(sim::Simulation& s, const std::vector<CollectiveRequest>& reqs, double bytes_per_s,
                    sim::SimTime latency);
  void start(std::uint32_t collective_index, sim::Callback done) override;
  sim::SimTime duration(const CollectiveRequest& r) const;

 private:
  sim::Simulation& sim_;
  const std::vector<CollectiveRequest>& reqs_;
  double bw_;
  sim::SimTime latency_;
};

}  // namespace moesim::engine
