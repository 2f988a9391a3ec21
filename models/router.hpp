#pragma once
/// \file
/// Token-level MoE router simulation: popularity model -> logits -> gate -> top-k -> capacity.
/// The implementation is split by role in models/router/ (models/README.md lists the files).
///
/// Semantics are those of validation_kernels/reference/routing_ref.hpp (ties go to the lower
/// expert / token index; `position` keeps the earliest tokens, `probs` the highest weights;
/// capacity per routing group), against which tests/models/routing_oracle_test.cpp checks every
/// routing path on the same scores. Results are deterministic functions of
/// (seed, step, layer, group): each group draws from its own named stream
/// "routing/step/<s>/layer/<l>/group/<g>", so the thread count or the order in which groups
/// are routed never changes a result.
///
/// Logit model (token mode): for a popularity vector p, token t's logit for expert e is
/// log(p_e) + Gumbel noise (log(E p_e) + Gumbel for the sigmoid gate). With a softmax gate this
/// makes the first choice exactly Categorical(p) and the top-k exactly Plackett-Luce sampling
/// without replacement from p (the Gumbel-top-k property); with p uniform, each token's k experts
/// are a uniformly random k-subset, so an expert's load over T tokens is Binomial(T, k/E).

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "models/model_spec.hpp"
#include "models/routing_spec.hpp"

namespace moesim::models {

/// Sentinel capacity meaning "dropless" (same value as vk::ref::kNoCapacityLimit).
inline constexpr std::int64_t kDropless = -1;

/// C = max(min_capacity, ceil(cf * tokens * k / E)), or kDropless when cf is nullopt.
/// The product is formed in long double and a value within 1e-9 (relative) of an integer snaps
/// to it before the ceil, so a decimal factor like 1.1 (stored as 1.10000000000000009) never adds
/// a slot: 1.1 * 100 * 1 / 1 gives 110, not 111. Same rule as the validation-kernel reference.
std::int64_t expert_capacity(std::int64_t tokens, int top_k, int experts, std::optional<double> capacity_factor,
                             std::int64_t min_capacity = 0);

/// Recorded routing: per MoE layer, per token, k expert ids.
///
/// CSV format (one header line, '#' comment lines and blank lines ignored):
///   layer,token,expert_0,...,expert_{k-1}
///   1,0,5,17
/// `layer` is the model's global layer index and must be a MoE layer; `token` counts 0,1,2,...
/// per layer in file order; ids are in [0, E) and distinct within a row. Every MoE layer of the
/// model must be present. Errors are ConfigErrors located at file:line.
struct RoutingTrace {
  std::string file;
  int top_k = 0;
  std::vector<int> layers;                ///< MoE layer indices, ascending
  std::vector<std::vector<int>> experts;  ///< [layer slot][token * k + j]
  std::int64_t tokens(std::size_t layer_slot) const {
    return static_cast<std::int64_t>(experts[layer_slot].size()) / top_k;
  }
};
RoutingTrace load_routing_trace(const std::string& file, const ModelSpec& model, int top_k);

/// One routing group (one rank's micro-batch): the decision and its capacity outcome.
struct GroupRouting {
  std::int64_t tokens = 0;
  int top_k = 0;
  std::int64_t capacity = kDropless;
  /// [tokens * k] expert per slot, slots ordered by descending score; -1 = not routed (GShard
  /// skipped second expert, or expert-choice slots no expert took). Empty in counts mode.
  std::vector<std::int32_t> expert;
  std::vector<float> weight;              ///< [tokens * k] combine weight
  std::vector<std::uint8_t> keep;         ///< [tokens * k] 1 = kept after capacity
  std::vector<std::int64_t> routed;       ///< [E] assignments routed (before capacity)
  std::vector<std::int64_t> kept;         ///< [E]
  std::vector<std::int64_t> dropped;      ///< [E]
  std::vector<std::int64_t> padded;       ///< [E] rows computed but empty (pad_to_capacity / block padding)
  std::vector<double> prob_sum;           ///< [E] sum over tokens of the router probability (aux loss P_i)
  std::int64_t fully_dropped_tokens = 0;  ///< -1 when unknown (counts mode)
  std::int64_t unrouted_slots = 0;        ///< GShard skipped seconds, expert-choice leftovers
  /// Only when RouteRequest::dest asks for them (DeepEP-style dispatchers): per destination EP
  /// rank, the tokens with at least one kept expert there (one row per (token, rank)); per
  /// destination node, the tokens with at least one kept expert on one of its ranks (one RDMA
  /// transfer per (token, node)). Counts mode estimates both (see DestinationMap).
  std::vector<std::int64_t> dest_rank_tokens;  ///< [ranks]
  std::vector<std::int64_t> dest_node_tokens;  ///< [nodes]
};

/// Load-balance and capacity statistics of one MoE layer, summed over its routing groups.
struct LayerStats {
  std::int64_t tokens = 0;
  std::int64_t routed = 0;
  std::int64_t kept = 0;
  std::int64_t dropped = 0;
  std::int64_t padded = 0;
  std::int64_t fully_dropped_tokens = 0;  ///< -1 when unknown (counts mode)
  std::vector<std::int64_t> expert_routed, expert_kept, expert_dropped, expert_padded;  ///< [E]
  double drop_fraction = 0;           ///< dropped / routed assignments
  double fully_dropped_fraction = 0;  ///< fully dropped tokens / tokens (NaN in counts mode)
  double padded_fraction = 0;         ///< padded rows / (kept + padded) rows
  double max_over_mean = 0;           ///< of routed per-expert load
  double cv = 0;                      ///< population std / mean of routed load
  double gini = 0;                    ///< Gini coefficient of routed load
  double aux_loss = 0;                ///< Switch E * sum_i f_i P_i (1 when perfectly balanced)
  double entropy = 0;                 ///< -sum f_i ln f_i of dispatch shares (nats)
  double entropy_normalized = 0;      ///< entropy / ln E
};

struct LayerRouting {
  int layer = 0;  ///< global layer index
  std::vector<GroupRouting> groups;
  LayerStats stats;
};

struct StepRouting {
  SamplingMode mode = SamplingMode::kToken;
  std::int64_t tokens_per_group = 0;
  int groups = 0;
  std::vector<LayerRouting> layers;  ///< one per MoE layer, ascending layer index
  /// Totals over layers.
  std::int64_t routed = 0, dropped = 0, kept = 0, padded = 0;
  double drop_fraction = 0, padded_fraction = 0, max_over_mean = 0;
};

/// What to route: `groups` routing groups of `tokens_per_group` tokens, for training/inference
/// step `step`. `ep_ranks` is only used by the balanced generator (it spreads over ranks first).
/// Counts mode: inclusion shares of the sorted popularity shape, computed once and reused by
/// every layer of one routing call (see counts_inclusion_shares). Owned by the caller for the
/// duration of one step and one RoutingSpec; not shared between threads; holds no result that a
/// cache-less call would not compute identically.
struct InclusionShareCache {
  struct Entry {
    int step = 0;
    std::uint64_t seed = 0;
    std::vector<double> shape;   ///< sorted popularity shape the pilot was run on
    std::vector<double> shares;  ///< inclusion shares by rank
  };
  std::vector<Entry> entries;
};

/// Where experts live, for the per-destination token counts of GroupRouting. Routing group g is
/// EP rank g % ranks; a token's assignment to expert e goes to replicas[e][(t + src) % m] (the
/// rule of models::build_dispatch_matrices), and rank r sits on node node_of_rank[r].
/// Token mode counts exactly. Counts mode has no per-token data and estimates: with q the share
/// of the group's kept assignments that land on a destination, the probability that a token has
/// none of its k choices there is taken as prod_{i<k} (1 - qE / (E - i)) (k draws without
/// replacement from E experts of which qE are "there": exact for uniform routing), and the count
/// is clamped between the largest single-expert share and min(tokens, kept assignments there).
struct DestinationMap {
  const std::vector<std::vector<int>>* replicas = nullptr;  ///< [E] ranks holding a copy
  std::vector<int> node_of_rank;                            ///< [ranks]
  int nodes = 1;
};

struct RouteRequest {
  std::int64_t tokens_per_group = 0;
  int groups = 1;
  int step = 0;
  std::uint64_t seed = 0;
  int ep_ranks = 1;
  bool keep_assignments = true;  ///< false: drop per-token arrays after stats (saves memory)
  /// Counts mode: optional per-step cache of the shape pilot (nullptr: computed per call, same
  /// bits). route_step supplies its own.
  InclusionShareCache* share_cache = nullptr;
  /// Non-null: fill GroupRouting::dest_rank_tokens / dest_node_tokens (ranks = ep_ranks).
  const DestinationMap* dest = nullptr;
};

/// Popularity vector p[E] (sums to 1) of layer `layer` at step `step`.
std::vector<double> expert_popularity(const RoutingSpec& spec, int layer, int step, std::uint64_t seed);

/// Counts mode: each expert's share of a layer's routed assignments (sums to 1), in order:
///  * uniform / balanced popularity: 1/E;
///  * k == E with no group-limited routing: 1/E (every token takes every expert);
///  * a Plackett-Luce gate (softmax, or sigmoid without a non-zero gate_bias; n_groups <= 1) and
///    k == 1 or 2: the exact inclusion probability of the Gumbel-top-k selection, divided by k
///    (k = 1: p_e; k = 2: p_e (1 + sum_{j != e} p_j / (1 - p_j)) / 2);
///  * a permutation-equivariant gate (that gate, or equal gate_bias everywhere) and a popularity
///    that is a per-layer permutation of one shape (power_law / hot_experts, layer_correlation 0,
///    no Dirichlet): a 131,072-token pilot on the sorted shape, once per (step, seed) (cached in
///    `cache` if given), permuted to the layer's experts;
///  * otherwise (e.g. group-limited routing, per-expert bias): a 16,384-token pilot of the layer.
std::vector<double> counts_inclusion_shares(const RoutingSpec& spec, int layer, int step, std::uint64_t seed,
                                            InclusionShareCache* cache = nullptr);
/// The per-layer pilot estimate of the shares of popularity `p`: route `tokens` tokens of
/// stream "routing/step/<step>/layer/<layer>/pilot" exactly and count assignments.
std::vector<double> pilot_inclusion_shares(const RoutingSpec& spec, const std::vector<double>& p, int layer, int step,
                                           std::uint64_t seed, std::int64_t tokens = 16384);

/// Capacity enforcement and per-expert accounting for a decision already made: fills capacity,
/// keep, routed/kept/dropped/padded and fully_dropped_tokens of `g` from g.expert / g.weight.
void enforce_capacity(GroupRouting& g, const RoutingSpec& spec);

/// Route one MoE layer. `trace` is required for Distribution::kTrace.
LayerRouting route_layer(const RoutingSpec& spec, int layer, const RouteRequest& req,
                         const RoutingTrace* trace = nullptr);
/// Route every MoE layer of the model.
StepRouting route_step(const ModelSpec& model, const RoutingSpec& spec, const RouteRequest& req,
                       const RoutingTrace* trace = nullptr);

/// Statistics from per-expert routed/kept/dropped/padded sums and probability sums.
LayerStats layer_stats(const std::vector<GroupRouting>& groups, int experts, int top_k);

/// Exact expected dropped-assignment fraction for uniform routing: per group an expert's load is
/// L ~ Binomial(T, k/E), dropped = E[max(0, L - C)], divided by T*k.
double expected_uniform_drop_fraction(std::int64_t tokens, int top_k, int experts, std::int64_t capacity);

/// Human summary of a routing-only run: parameter counts, mode, then one line per MoE layer.
void format_routing_summary(std::ostream& os, const ModelSpec& model, const RoutingSpec& spec, const StepRouting& step);

}  // namespace moesim::models
