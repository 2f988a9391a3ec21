#pragma once
/// \file
/// What the `routing:` block of a scenario says: where token->expert choices come from (a
/// synthetic popularity model or a recorded trace), how the gate turns logits into top-k
/// choices, and how capacity is enforced. Gate defaults come from the model's own config
/// (DeepSeek-V3's sigmoid + bias + group-limited routing), so a scenario only writes what it
/// changes.

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "models/model_spec.hpp"

namespace moesim::config {
class Node;
}

namespace moesim::models {

/// Expert popularity model (the mean of the per-token choice distribution).
enum class Distribution {
  kUniform,     ///< every expert equally likely; per-expert load ~ Binomial(T, k/E) exactly
  kBalanced,    ///< deterministic round-robin over EP ranks first, then experts: perfectly even
  kPowerLaw,    ///< p(rank r) proportional to (r+1)^-alpha over a random expert permutation
  kHotExperts,  ///< hot_count experts share hot_share of the mass, the rest share the remainder
  kDirichlet,   ///< per step, p ~ Dirichlet(concentration * E * base) around the base
  kTrace,       ///< replay recorded expert ids from a CSV file
};
enum class DropPolicy { kPosition, kProbs };
/// kToken: every token drawn and gated (exact for the logit model). kCounts: per-expert counts
/// drawn from a multinomial (no per-token data; for huge runs; approximate: an expert's load has
/// the variance of T*k independent draws, not of T top-k draws; see models/README.md).
enum class SamplingMode { kToken, kCounts };

struct RoutingSpec {
  Distribution distribution = Distribution::kUniform;
  double alpha = 1.0;                          ///< power_law exponent (0 = balanced in expectation)
  int hot_count = 1;                           ///< hot_experts
  double hot_share = 0.5;                      ///< hot_experts: share of the popularity mass on the hot ones
  double concentration = 1.0;                  ///< dirichlet: larger = closer to the base popularity
  std::optional<double> dirichlet_base_alpha;  ///< dirichlet base is power_law(alpha) if set, else uniform
  std::string trace_file;                      ///< trace: CSV path (relative paths resolved by the caller)
  /// 0: each layer draws its own expert permutation; 1: every layer has the same popularity.
  double layer_correlation = 0.0;

  // Gate (defaults copied from the model).
  int experts = 0;
  int top_k = 0;
  GateFunction gate = GateFunction::kSoftmax;
  std::vector<double> gate_bias;  ///< selection bias per expert (sigmoid gate); empty = zeros
  bool renormalize = false;
  int n_groups = 1;
  int topk_group = 1;
  double scaling_factor = 1.0;
  bool gshard_random_second = false;  ///< top-2 only: keep expert 2 with probability min(1, 2*g2)
  bool expert_choice = false;         ///< each expert takes its top-C tokens (Zhou et al. 2022)

  // Capacity.
  std::optional<double> capacity_factor;  ///< nullopt = dropless ("none")
  std::int64_t min_capacity = 0;
  DropPolicy drop_policy = DropPolicy::kPosition;
  bool pad_to_capacity = false;
  std::int64_t block_size = 128;  ///< dropless: rows per expert rounded up to this

  SamplingMode sampling = SamplingMode::kToken;
  /// EPLB-style redundant expert slots (0 = none); lets E not divide the EP size.
  int redundant_experts = 0;

  bool dropless() const { return !capacity_factor.has_value(); }
};

/// The spec a model implies with no routing: block (uniform, dropless, model's gate).
RoutingSpec default_routing(const ModelSpec& model);

/// Reads a `routing:` block. Keys: distribution [uniform|balanced|power_law|hot_experts|
/// dirichlet|trace], alpha, hot_count, hot_share, concentration, trace (file), layer_correlation,
/// gate [softmax|sigmoid], gate_bias (list of E numbers), renormalize, n_groups, topk_group,
/// scaling_factor, top_k, gshard_random_second, expert_choice, capacity_factor (number > 0 or
/// none), min_capacity, drop_policy [position|probs], pad_to_capacity, block_size,
/// sampling [token|counts], redundant_experts. Errors (top_k > experts, capacity_factor <= 0,
/// ...) go to the node's Diagnostics.
RoutingSpec parse_routing(const config::Node& node, const ModelSpec& model);

/// Why `experts` cannot be spread over `ep` ranks (nullopt if it can): E % ep != 0 without
/// redundant experts, or (E + redundant) % ep != 0 with them.
std::optional<std::string> placement_problem(int experts, int ep, int redundant_experts);

/// `moesim describe routing`: the routing: keys, their choices and defaults.
void describe_routing(std::ostream& os);

std::string to_string(Distribution d);
std::string to_string(SamplingMode m);

}  // namespace moesim::models
