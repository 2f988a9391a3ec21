#pragma once
/// \file
/// Plays a step graph on simulated GPUs.
///
/// Model (the CUDA one): every GPU has a compute stream and a communication stream. Ops on one
/// stream run in the order they were added (stream order), and an op also waits for its
/// explicit dependencies, which may live on other streams or GPUs (events/barriers). A
/// collective is ONE op shared by its participants: it starts when it is at the head of every
/// participant's communication stream and its dependencies are done; its duration comes from
/// the `CommBackend` (the flow network), so concurrent collectives contend on real links.
///
/// SM sharing: while a collective runs it may occupy `sm_count` SMs of each participant (as
/// DeepEP's kernels do); a compute op on that GPU then progresses at (SMs - taken) / SMs of its
/// full speed. Compute progress is tracked in integer "full-speed picoseconds" so re-rating is
/// exact and deterministic.
///
/// Accounting happens once, in `finish()`: per GPU busy intervals are swept to produce the
/// breakdown (compute, dispatch, combine, other collectives, exposed communication, idle).

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/simulation.hpp"
#include "sim/trace.hpp"

namespace moesim::engine {

/// What an op's time counts as in the breakdown.
enum class Category : std::uint8_t { kCompute, kDispatch, kCombine, kOtherComm };
const char* to_string(Category c);

/// The hardware engine a communication op uses (trace track; compute ops use kCompute).
enum class EngineKind : std::uint8_t { kCompute = 0, kNvlink = 1, kNic = 2 };

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
  std::string name;
  Category category = Category::kCompute;
  int layer = -1;  ///< model layer (for reports and trace args), -1 if none
  int micro_batch = -1;
  double flops = 0;  ///< for MFU and trace args
  double bytes = 0;  ///< for trace args
};

class StepGraph {
 public:
  explicit StepGraph(int num_gpus) : num_gpus_(num_gpus), last_compute_(num_gpus, kNoOp), last_comm_(num_gpus, kNoOp) {}

  /// A kernel on `gpu`'s compute stream taking `duration` at full SM availability.
  OpId compute(int gpu, OpInfo info, sim::SimTime duration, const std::vector<OpId>& deps = {});
  /// A collective among `gpus` (in the comm stream of each), timed by the backend.
  OpId collective(const std::vector<int>& gpus, OpInfo info, std::uint32_t collective_index, EngineKind engine,
                  const std::vector<OpId>& deps = {}, int sm_count = 0);
  /// A pure dependency edge: `after` waits for `before`.
  void depend(OpId after, OpId before);
  /// Like depend(), and draws a flow arrow in the trace (dispatch -> GEMM -> combine).
  void flow(OpId after, OpId before);

  int num_gpus() const { return num_gpus_; }
  std::size_t size() const { return ops_.size(); }

 private:
  friend class Executor;
  struct Op {
    OpInfo info;
    sim::SimTime duration{};  // compute only
    std::vector<int> gpus;    // one for compute
    std::uint32_t collective = 0;
    EngineKind engine = EngineKind::kCompute;
    int sm_count = 0;
    std::vector<OpId> succ;
    std::vector<OpId> flow_pred;
    std::uint32_t deps = 0;
  };
  void add_edge(OpId before, OpId after);
  int num_gpus_;
  std::vector<Op> ops_;
  std::vector<OpId> last_compute_;
  std::vector<OpId> last_comm_;
};

struct GpuBreakdown {
  sim::SimTime compute{};
  sim::SimTime dispatch{};
  sim::SimTime combine{};
  sim::SimTime other_comm{};
  sim::SimTime exposed_comm{};  ///< communication active while the compute stream is idle
  sim::SimTime idle{};          ///< neither compute nor communication active
  sim::SimTime busy_end{};      ///< when this GPU's last op finished
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
  /// dependency cycle or a backend that lost a collective) or events were left behind.
  ExecutionResult run();

 private:
  void make_ready(OpId id);
  void start(OpId id);
  void complete(OpId id);
  void start_compute(OpId id);
  void reschedule_compute(int gpu);
  void set_comm_sms(int gpu, int delta);
  void record(OpId id, sim::SimTime start, sim::SimTime end);

  sim::Simulation& sim_;
  StepGraph& g_;
  CommBackend& backend_;
  ExecutorOptions opts_;
  std::vector<std::uint32_t> pending_deps_;
  std::vector<sim::SimTime> start_time_;
  std::vector<int> lane_;
  std::vector<std::uint8_t> done_;
  struct GpuState {
    OpId running = kNoOp;
    std::int64_t remaining_full_ps = 0;  // full-speed work left as of segment_start
    sim::SimTime segment_start{};
    int comm_sms = 0;
    sim::EventId completion{};
  };
  std::vector<GpuState> gpu_;
  struct Interval {
    std::int64_t start;
    std::int64_t end;
    Category cat;
  };
  std::vector<std::vector<Interval>> intervals_;
  std::uint64_t completed_ = 0;
  std::uint64_t flow_ids_ = 0;
};

}  // namespace moesim::engine
