#pragma once
/// \file
/// Plays a step graph on simulated GPUs.
///
/// Model (the CUDA/NCCL one): every GPU has a compute stream and three communication streams.
/// NCCL runs each communicator's kernels on that communicator's stream, so collectives of
/// different process groups do not queue behind one another: expert- and tensor-parallel
/// collectives (on the critical path of every layer) go to the EP/TP stream, data-parallel
/// gradient reduce-scatters and parameter all-gathers to the DP stream (overlapping backward
/// compute, as Megatron-Core's overlap_grad_reduce does), pipeline send/recv to the PP stream.
/// They still share links in the network model, so concurrent collectives slow each other down
/// there. Ops on one stream run in the order they were added (stream order), and an op also waits
/// for its explicit dependencies, which may live on other streams or GPUs (events/barriers). A
/// collective is ONE op shared by its participants: it starts when it is at the head of its
/// stream on every participant and its dependencies are done; its duration comes from the
/// `CommBackend` (the flow network), so concurrent collectives contend on real links.
///
/// SM sharing: while a collective runs it may occupy `sm_count` SMs of each participant (as
/// DeepEP's kernels do); a compute op on that GPU then progresses at (SMs - taken) / SMs of its
/// full speed. Compute progress is tracked in integer "full-speed picoseconds" so re-rating is
/// exact and deterministic.
///
/// Accounting is online and O(GPUs) in memory: per GPU, the time with any communication active
/// and the part of it overlapped by compute are integrated at every state change, and each op's
/// duration is added to its category when it completes. The breakdown follows: compute,
/// dispatch, combine, other (TP) collectives, data-parallel and pipeline communication, exposed
/// communication (communication active while the compute stream is idle), idle.
///
/// Storage is compact (about 60 bytes per op plus 8 per dependency edge while building, 4 per
/// edge once frozen): op names are interned, participants live in one flat array and edges are
/// turned into a successor CSR when the executor starts, so million-op steps stay small.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sim/simulation.hpp"
#include "sim/trace.hpp"

namespace moesim::engine {

/// What an op's time counts as in the breakdown.
enum class Category : std::uint8_t { kCompute, kDispatch, kCombine, kOtherComm, kDataParallel, kPipeline };
const char* to_string(Category c);

/// The stream an op is queued on (and its trace track).
/// kDpGather carries ZeRO-3 parameter all-gathers, apart from the gradient reduce-scatters of
/// kDpComm (FSDP issues the two on separate streams, so a prefetch never queues behind a
/// reduction waiting for its layer's backward).
enum class Stream : std::uint8_t { kCompute = 0, kEpComm = 1, kDpComm = 2, kPpComm = 3, kDpGather = 4 };
inline constexpr int kNumStreams = 5;
/// Trace track name: "compute", "comm EP/TP", "comm DP", "comm PP", "comm DP gather".
const char* to_string(Stream s);

using OpId = std::uint32_t;
inline constexpr OpId kNoOp = ~OpId{0};

/// Turns a collective into time. The executor calls `start(index, done)` once per collective
/// op, at the simulated instant it starts; the backend must invoke `done` exactly once, later
/// or at the same instant, through events on the same Simulation.
class CommBackend {
 public:
  virtual ~CommBackend() = default;
  virtual void start(std::uint32_t collective_index, sim::Callback done) = 0;
};

struct OpInfo {
  std::string_view name;  ///< copied (interned) by the graph
  Category category = Category::kCompute;
  int layer = -1;  ///< model layer (for reports and trace args), -1 if none
  int micro_batch = -1;
  double flops = 0;  ///< for MFU and trace args
  double bytes = 0;  ///< for trace args
  /// Trace lane of the participants outside a collective's stream order (see `ordered_gpus`):
  /// they draw it on the track "comm PP recv fwd" (0) or "comm PP recv bwd" (1).
  int recv_lane = 0;
  /// Host (CPU) time to issue this op: the framework's Python/dispatch work and the launch. The
  /// host issues a GPU's ops in program order and only waits at `host_sync` ops (a
  /// device-to-host copy it needs, e.g. tokens per expert), so an op cannot start before
  /// (completion of the GPU's last sync op) + (host time of the ops issued since). Zero
  /// everywhere (the default) means an infinitely fast host.
  sim::SimTime host_cost{};
  bool host_sync = false;
};

class StepGraph {
 public:
  explicit StepGraph(int num_gpus);

  /// A kernel on `gpu`'s compute stream taking `duration` at full SM availability.
  OpId compute(int gpu, const OpInfo& info, sim::SimTime duration, const std::vector<OpId>& deps = {});
  /// A collective among `gpus` (queued on `stream` of each), timed by the backend. With
  /// `ordered_gpus` = n >= 0 only the first n participants queue it in their stream order; the
  /// others take part whenever it starts (a receive posted ahead of time, as Megatron's
  /// overlapped pipeline p2p does with irecv), so it never waits behind their other transfers.
  OpId collective(const std::vector<int>& gpus, const OpInfo& info, std::uint32_t collective_index, Stream stream,
                  const std::vector<OpId>& deps = {}, int sm_count = 0, int ordered_gpus = -1);
  /// A pure dependency edge: `after` waits for `before`.
  void depend(OpId after, OpId before);
  /// Like depend(), and draws a flow arrow in the trace (dispatch -> GEMM -> combine).
  void flow(OpId after, OpId before);

  /// Capacity hints (untouched capacity costs address space, not memory).
  void reserve(std::size_t ops, std::size_t edges, std::size_t participants) {
    ops_.reserve(ops);
    edges_.reserve(edges);
    gpus_.reserve(participants);
  }
  int num_gpus() const { return num_gpus_; }
  std::size_t size() const { return ops_.size(); }
  std::size_t edges() const { return frozen_ ? succ_.size() : edges_.size(); }
  /// Interned name of an op, and its id (dense, in order of first use).
  std::uint16_t name_id(OpId id) const { return ops_[id].name; }
  const std::string& name(OpId id) const { return names_[ops_[id].name]; }
  const std::vector<std::string>& names() const { return names_; }
  Stream stream(OpId id) const { return ops_[id].stream; }
  /// Bytes of graph storage in use (sizes, not capacities; for benchmarks).
  std::size_t memory_bytes() const;

 private:
  friend class Executor;
  struct Op {
    sim::SimTime duration{};  // compute only
    double flops = 0;
    double bytes = 0;
    std::uint32_t gpu_begin = 0;  // participants: gpus_[gpu_begin, gpu_begin + gpu_count)
    std::uint32_t gpu_count = 0;
    std::uint32_t collective = 0;
    std::uint32_t deps = 0;
    std::int32_t layer = -1;
    std::int32_t micro_batch = -1;
    std::uint16_t name = 0;
    std::uint16_t sm_count = 0;
    Category category = Category::kCompute;
    Stream stream = Stream::kCompute;
    std::uint32_t ordered = 0;  // participants [0, ordered) queue it in their stream order
    std::uint8_t recv_lane = 0;
    std::uint8_t host_sync = 0;
  };
  void add_host_cost(OpId id, std::span<const int> gpus, const OpInfo& info);
  OpId add_op(const OpInfo& info);
  void add_edge(OpId before, OpId after);
  std::uint16_t intern(std::string_view name);
  /// Turns the edge list into a successor CSR (once; the executor calls it).
  void freeze();
  std::span<const int> gpus(const Op& op) const { return {gpus_.data() + op.gpu_begin, op.gpu_count}; }

  struct NameHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  int num_gpus_;
  std::vector<Op> ops_;
  std::vector<int> gpus_;
  std::vector<std::pair<OpId, OpId>> edges_;       // (before, after) until frozen
  std::vector<std::pair<OpId, OpId>> flow_edges_;  // (after, before): trace arrows
  std::vector<std::uint32_t> succ_begin_;          // CSR once frozen: succ_[succ_begin_[i] ..]
  std::vector<OpId> succ_;
  bool frozen_ = false;
  bool has_unordered_ = false;  // some collective has participants outside its stream order
  // Host issue model (empty until an op has a host cost): per op, host time since the last sync
  // op on its GPU (compute ops only); per GPU, the running sum while building.
  std::vector<std::int64_t> host_offset_;
  std::vector<std::int64_t> host_accum_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, std::uint16_t, NameHash, std::equal_to<>> name_ids_;
  std::vector<OpId> last_;  // [stream * num_gpus + gpu]
};

struct GpuBreakdown {
  sim::SimTime compute{};
  sim::SimTime dispatch{};
  sim::SimTime combine{};
  sim::SimTime other_comm{};     ///< tensor-parallel and other collectives on the EP/TP stream
  sim::SimTime data_parallel{};  ///< gradient reduce-scatter / all-reduce and parameter all-gather
  sim::SimTime pipeline{};       ///< pipeline send/recv
  sim::SimTime exposed_comm{};   ///< communication active while the compute stream is idle
  sim::SimTime idle{};           ///< neither compute nor communication active
  /// `idle`, split by what ended each idle span (they sum to `idle` exactly; checked):
  sim::SimTime wait_ep{};     ///< an EP/TP collective started: this GPU waited for its slowest peer
  sim::SimTime wait_dp{};     ///< a DP collective started
  sim::SimTime wait_pp{};     ///< a pipeline send/recv started (pipeline bubbles)
  sim::SimTime wait_other{};  ///< a compute op started (a dependency on another GPU's op)
  sim::SimTime wait_host{};   ///< a compute op started once the host had issued it (host-bound)
  sim::SimTime idle_tail{};   ///< after this GPU's last op, until the step ended on the slowest GPU
  sim::SimTime busy_end{};    ///< when this GPU's last op finished
};

struct ExecutionResult {
  sim::SimTime step_time{};
  std::vector<GpuBreakdown> per_gpu;
  std::uint64_t ops_executed = 0;
  std::uint64_t events = 0;
  int critical_gpu = 0;  ///< the GPU that finished last
};

struct ExecutorOptions {
  int sms_per_gpu = 132;
  sim::TraceWriter* trace = nullptr;   ///< optional; not owned
  std::vector<std::string> gpu_names;  ///< trace process names, e.g. "GPU 5 (node 0)"
};

class Executor {
 public:
  Executor(sim::Simulation& sim, StepGraph& graph, CommBackend& backend, ExecutorOptions opts);
  /// Runs the graph to completion; throws sim::SimulationError if an op never ran (a
  /// dependency cycle or a backend that lost a collective), an op completed twice, or events
  /// were left behind (the queue did not drain).
  ExecutionResult run();

 private:
  void start(OpId id);
  void complete(OpId id);
  void start_compute(OpId id);
  void reschedule_compute(int gpu);
  void set_comm_sms(int gpu, int delta);
  void advance(int gpu);
  void record(OpId id, sim::SimTime start, sim::SimTime end);

  sim::Simulation& sim_;
  StepGraph& g_;
  CommBackend& backend_;
  ExecutorOptions opts_;
  std::vector<std::uint32_t> pending_deps_;
  std::vector<sim::SimTime> start_time_;
  std::vector<std::uint8_t> done_;
  std::vector<std::uint32_t> flow_begin_;  // trace only: CSR of flow predecessors by op
  std::vector<OpId> flow_pred_;
  struct GpuState {
    OpId running = kNoOp;
    std::int64_t remaining_full_ps = 0;  // full-speed work left as of segment_start
    sim::SimTime segment_start{};
    int comm_sms = 0;
    sim::EventId completion{};
    // online breakdown
    int comm_active = 0;
    std::int64_t last_change_ps = 0;
    std::int64_t comm_union_ps = 0;
    std::int64_t comm_overlap_ps = 0;
    std::int64_t idle_pending_ps = 0;  // idle since the last op start, not yet attributed
    bool host_gated = false;           // the next compute op waits for the host to issue it
  };
  std::vector<std::int64_t> host_release_ps_;  // per GPU: when its host last left a sync
  /// Attributes `gpu`'s pending idle time to what starts now on it (first start wins).
  void end_idle(int gpu, Stream starting);
  std::vector<GpuState> gpu_;
  std::vector<GpuBreakdown> acc_;
  std::uint64_t completed_ = 0;
  std::uint64_t flow_ids_ = 0;
};

}  // namespace moesim::engine
