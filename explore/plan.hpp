#pragma once
/// \file
/// The deployment planner behind `moesim plan PLAN.yaml`.
///
/// A plan names a base scenario (model, workload, fabric, routing), GPU candidates with a price
/// per GPU-hour, limits and search axes. The planner
///   1. enumerates every combination of GPU type x GPU count x (tp, pp) with dp = gpus/(tp*pp)
///      x ep x micro-batches x capacity factor x recompute x ZeRO stage (training) or batch (decode), in a
///      fixed nested order (the candidate index);
///   2. builds each candidate as the base document plus `--set`-style overrides and parses it
///      with engine::parse_scenario, so it is validated exactly as `moesim run` would (invalid
///      candidates are kept and counted by the key of their first error);
///   3. prunes before simulating, with a stated rule for each pruned point:
///        limit      more GPUs/nodes or a higher hourly cost than `limits` allows;
///        memory     engine::estimate_memory's peak exceeds the GPU's HBM (the same estimate the
///                   simulated report carries);
///        price      the same GPU and configuration is offered at a lower (or, first wins, the
///                   same) price: the simulation is identical, so time and throughput per GPU are
///                   equal and cost is higher -- exact;
///        recompute  the same configuration without activation recomputation fits in memory:
///                   recomputation only adds forward work to the step graph, so it cannot be
///                   faster and costs the same per hour -- relies on the executor not speeding up
///                   when work is added (tests/explore checks it on small cases);
///   4. simulates the rest with engine::run_scenario on `threads` threads (explore::run_ordered:
///      results in index order, so every output is byte-identical for any thread count);
///   5. drops the candidates that miss a latency target (decode: TPOT = decode step time, TTFT =
///      prefill time of the whole batch), ranks the rest by the objective (ties: lower index
///      first) and marks the Pareto front of (cost per million tokens, step time/TPOT).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "engine/scenario.hpp"

namespace moesim::explore {

enum class Objective { kThroughputPerGpu, kCostPerMtok, kStepTime };
const char* to_string(Objective o);

struct GpuOption {
  std::string gpu;            ///< GPU catalog name
  double price_per_hour = 0;  ///< price of one GPU for one hour (any currency; $ in the docs)
};

/// A parsed PLAN.yaml. Axes left empty take their defaults at enumeration time (see plan.cpp).
struct PlanSpec {
  std::string name;
  std::string file;
  std::string base_file;               ///< scenario the candidates are built from
  std::vector<std::string> base_sets;  ///< `set:` overrides applied to the base first
  std::vector<GpuOption> gpus;
  int max_gpus = 0;                           ///< 0 = no limit (then search.gpus is required)
  int max_nodes = 0;                          ///< 0 = no limit
  double max_cost_per_hour = 0;               ///< 0 = no limit
  std::vector<int> gpu_counts;                ///< search.gpus
  std::vector<int> tp, ep, pp;                ///< search.tp / ep / pp
  std::vector<int> micro_batches;             ///< search.micro_batches (training)
  std::vector<std::string> capacity_factors;  ///< search.capacity_factor ("none" = dropless)
  std::vector<int> recompute;                 ///< search.recompute (training; 0/1)
  std::vector<int> zero_stage;                ///< search.zero_stage (training; 0..3)
  std::vector<std::int64_t> batch;            ///< search.batch (decode)
  std::int64_t prompt_len = 0;                ///< prefill.prompt_len: > 0 simulates TTFT
  std::optional<double> tpot_us, ttft_us;     ///< targets (decode)
  Objective objective = Objective::kCostPerMtok;
  int top = 5;                  ///< scenario YAMLs written for the best `top` candidates
  config::Location search_loc;  ///< where an empty candidate set is reported

  // Resolved from the base scenario while loading.
  engine::WorkloadMode mode = engine::WorkloadMode::kTrain;
  int gpus_per_node = 8;
  int experts = 0;
};

/// Reads and checks PLAN.yaml (and its base scenario), after applying `overrides` ("key=value",
/// the `--set` mechanism) to the plan. Throws config::ConfigError listing every problem.
PlanSpec load_plan(const std::string& path, const std::vector<std::string>& overrides = {});
/// The same from YAML text (`name` is used as the file name in locations and to resolve `base`).
PlanSpec load_plan_string(const std::string& text, const std::string& name);

enum class Status { kOk, kViolatesTarget, kFailed, kInvalid, kPrunedLimit, kPrunedMemory, kPrunedDominated };
const char* to_string(Status s);

struct Candidate {
  std::size_t index = 0;
  int gpu_option = 0;  ///< index into PlanSpec::gpus
  int gpus = 0, nodes = 0, gpus_per_node = 0;
  int dp = 1, tp = 1, ep = 1, pp = 1, micro_batches = 1;
  std::string capacity_factor;  ///< "" = the base scenario's
  int recompute = -1;           ///< -1 = the base scenario's
  int zero_stage = -1;          ///< -1 = the base scenario's (search.zero_stage not given)
  std::int64_t batch = 0;       ///< decode batch (0 for training)

  Status status = Status::kOk;
  std::string rule;           ///< invalid: key of the first error; pruned: limit|memory|price|recompute
  std::string reason;         ///< one human line
  std::size_t dominator = 0;  ///< kPrunedDominated: index of the candidate that is no worse

  double peak_bytes = 0, capacity_bytes = 0;  ///< estimated per GPU (decode: max with prefill)
  bool fits = false;
  // Simulated (kOk, kViolatesTarget):
  double step_time_us = 0;  ///< training step, or decode step = TPOT
  double ttft_us = 0;       ///< prefill of the whole batch (0 when not simulated)
  double tokens_per_s = 0;  ///< training tokens/s, or generated tokens/s (batch / TPOT)
  double tokens_per_s_per_gpu = 0;
  double cost_per_mtok = 0;  ///< price x GPUs / (tokens/s x 3600) x 1e6
  double drop_fraction = 0;
  double mfu = 0;
  int rank = 0;  ///< 1-based among kOk by the objective; 0 otherwise
  bool pareto = false;
};

struct PlanResult {
  std::vector<Candidate> candidates;  ///< every enumerated candidate, by index
  std::vector<std::size_t> ranked;    ///< kOk indices, best first
  std::vector<std::size_t> pareto;    ///< Pareto front, by increasing step time
  /// The scenario document of each candidate that parsed (empty text otherwise), and of its
  /// prefill run (decode plans with prefill.prompt_len).
  std::vector<std::string> scenario_yaml, prefill_yaml;
};

/// Enumerates, validates, estimates memory and prunes; nothing is simulated. Surviving
/// candidates have status kOk and no simulated metrics yet.
PlanResult prepare_plan(const PlanSpec& plan);

/// Throws config::ConfigError (located at `search:`) when prepare_plan left nothing to simulate,
/// with the counts by outcome and rule.
void check_not_empty(const PlanSpec& plan, const PlanResult& r);

/// Simulates the survivors of prepare_plan on `threads` threads, applies the targets, ranks and
/// marks the Pareto front. `progress(done, total)` is called on the calling thread.
void simulate_plan(const PlanSpec& plan, PlanResult& r, int threads,
                   const std::function<void(std::size_t, std::size_t)>& progress = {});

/// Ranks kOk candidates by the objective and marks the Pareto front (cost, time). Exposed for
/// tests; simulate_plan calls it.
void rank_candidates(const PlanSpec& plan, PlanResult& r);

/// plan.csv (every candidate) and pareto.csv (the front): deterministic for any thread count.
void write_plan_csv(const PlanSpec& plan, const PlanResult& r, std::ostream& os);
void write_pareto_csv(const PlanSpec& plan, const PlanResult& r, std::ostream& os);
/// The counts by outcome and rule, then the ranked table with the Pareto front marked.
std::string format_summary(const PlanSpec& plan, const PlanResult& r, std::size_t max_rows = 20);
/// Writes plan.csv, pareto.csv and the top scenario YAMLs into `dir` (created); returns the
/// paths written.
std::vector<std::string> write_outputs(const PlanSpec& plan, const PlanResult& r, const std::string& dir);

}  // namespace moesim::explore
