// Every token-choice routing path of the simulator against the validation-kernel reference, on the
// same scores: the reference (validation_kernels/reference, select_experts and enforce_capacity)
// is the oracle of the gate and of capacity; the simulator's paths (the small-E SIMD variants, the
// generic loop with and without its candidate threshold, group-limited and biased gates, with
// stored assignments and with capacity applied while routing, as the step simulation runs it) must
// give its answers bit for bit.
//
// The scores are the simulator's own draws of the logit model (detail::draw_scores on the group's
// stream, which every path consumes in the same order); what is checked is what the paths do with
// them. ctest runs this file a second time with MOESIM_ROUTER_NO_AVX512=1 (models_router_8wide),
// so on AVX-512 machines both small-E widths are covered.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "models/router.hpp"
#include "models/router/token_choice.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

using namespace moesim;
using namespace moesim::models;
namespace ref = moesim::vk::ref;

namespace {

ref::GateConfig gate_config(const RoutingSpec& s) {
  ref::GateConfig c;
  c.kind = s.gate == GateFunction::kSigmoid ? ref::GateKind::kSigmoidBias : ref::GateKind::kSoftmax;
  c.num_experts = s.experts;
  c.topk = s.top_k;
  c.num_groups = s.n_groups;
  c.topk_group = s.n_groups > 1 ? s.topk_group : 1;
  c.renormalize = s.renormalize;
  c.weight_scale = s.scaling_factor;
  return c;
}

/// What the reference makes of one routing group's scores.
struct Expected {
  ref::Routing routing;        ///< selection (kNoExpert where GShard skipped the second expert)
  ref::Capacity capacity;      ///< the reference's capacity outcome of that selection
  std::vector<double> prob;    ///< [E] sum over tokens of the router probability s_e / sum(s)
  std::int64_t unrouted = 0;   ///< GShard skips
  double softmax_error = 0.0;  ///< largest relative gap between the simulator's softmax and the reference's gate
};

/// The reference's routing of group `gi` of layer `layer`: per token the scores of the logit model
/// on the group's stream, ref::select_experts<float> on them (config `cfg`), GShard's rule (keep
/// the second expert when 2 g2 > u, g2 = w2 / (w1 + w2) before renormalisation, u from the
/// group's "/gshard" stream), then ref::enforce_capacity with capacity `C`.
Expected reference_group(const RoutingSpec& s, const ref::GateConfig& cfg, int layer, const RouteRequest& req, int gi,
                         std::int64_t C) {
  const int E = s.experts, k = s.top_k;
  const std::size_t Eu = static_cast<std::size_t>(E), ku = static_cast<std::size_t>(k);
  const std::int64_t T = req.tokens_per_group;
  const bool sigmoid = s.gate == GateFunction::kSigmoid;
  const auto plan = detail::make_token_choice_plan(s, expert_popularity(s, layer, req.step, req.seed));
  std::vector<float> bias;
  for (double b : s.gate_bias) bias.push_back(static_cast<float>(b));
  const std::string stream = detail::group_stream(req.step, layer, gi);
  sim::Rng rng(req.seed, stream);
  sim::Rng aux(req.seed, stream + "/gshard");
  detail::LaneRng lanes(rng);
  const std::size_t block = detail::token_block(E);
  std::vector<std::uint32_t> bits((block * Eu + 7) / 8 * 8);
  std::vector<float> scores(block * Eu), weight(Eu);
  Expected x;
  x.routing.tokens = T;
  x.routing.topk = k;
  x.routing.expert.resize(static_cast<std::size_t>(T) * ku);
  x.routing.weight.resize(x.routing.expert.size());
  x.routing.score.resize(x.routing.expert.size());
  x.prob.assign(Eu, 0.0);
  std::vector<float> logits(Eu);
  for (std::int64_t t0 = 0; t0 < T; t0 += static_cast<std::int64_t>(block)) {
    const std::size_t nb = static_cast<std::size_t>(std::min<std::int64_t>(static_cast<std::int64_t>(block), T - t0));
    detail::draw_scores(lanes, plan, sigmoid, nb, bits.data(), scores.data());
    for (std::size_t b = 0; b < nb; ++b) {
      const float* sc = scores.data() + b * Eu;
      const std::size_t slot = static_cast<std::size_t>(t0 + static_cast<std::int64_t>(b)) * ku;
      const float inv = 1.0f / detail::sum_f(sc, E);
      for (std::size_t e = 0; e < Eu; ++e) {
        weight[e] = sigmoid ? sc[e] : sc[e] * inv;
        x.prob[e] += static_cast<double>(sc[e] * inv);
      }
      ref::select_experts<float>(sc, weight.data(), bias.empty() ? nullptr : bias.data(), cfg, &x.routing.expert[slot],
                                 &x.routing.weight[slot], &x.routing.score[slot]);
      if (s.gshard_random_second) {
        const double w1 = weight[static_cast<std::size_t>(x.routing.expert[slot])];
        const double w2 = weight[static_cast<std::size_t>(x.routing.expert[slot + 1])];
        if (!(2.0 * (w2 / (w1 + w2)) > aux.uniform01())) {
          x.routing.expert[slot + 1] = ref::kNoExpert;
          ++x.unrouted;
        }
      }
      if (!sigmoid && b % 61 == 0) {
        // The gate itself: the simulator's probabilities are the reference's softmax of ln s.
        for (std::size_t e = 0; e < Eu; ++e) logits[e] = static_cast<float>(std::log(static_cast<double>(sc[e])));
        ref::GateConfig all = cfg;
        all.topk = E;
        all.num_groups = all.topk_group = 1;
        all.renormalize = false;
        all.weight_scale = 1.0;
        const ref::Routing g = ref::gate_topk(logits.data(), 1, all);
        for (std::size_t j = 0; j < Eu; ++j) {
          const double want = g.weight[j], got = weight[static_cast<std::size_t>(g.expert[j])];
          x.softmax_error = std::max(x.softmax_error, std::abs(got - want) / want);
        }
      }
    }
  }
  x.capacity = ref::enforce_capacity(
      x.routing, E, C, s.drop_policy == DropPolicy::kProbs ? ref::DropPolicy::kProbs : ref::DropPolicy::kPosition);
  return x;
}

/// "" when the simulator's group `g` is what the reference expects, else the first difference.
std::string mismatch(const RoutingSpec& s, const GroupRouting& g, const Expected& x, bool stored) {
  std::ostringstream os;
  if (stored) {
    if (g.expert != x.routing.expert) return "expert ids differ";
    if (g.weight != x.routing.weight) return "weights differ";
    if (g.keep != x.capacity.keep) return "kept slots differ";
  } else if (!g.expert.empty() || !g.weight.empty() || !g.keep.empty()) {
    return "per-slot arrays kept without keep_assignments";
  }
  if (g.routed != x.capacity.routed_count) return "routed counts differ";
  if (g.kept != x.capacity.kept_count) return "kept counts differ";
  if (g.fully_dropped_tokens != x.capacity.fully_dropped_tokens) return "fully dropped tokens differ";
  if (g.unrouted_slots != x.unrouted) return "unrouted slots differ";
  std::int64_t dropped = 0;
  for (std::size_t e = 0; e < g.dropped.size(); ++e) dropped += g.dropped[e];
  if (dropped != x.capacity.dropped_assignments) return "dropped assignments differ";
  const std::int64_t C = x.capacity.capacity;
  const auto scan = ref::exclusive_scan(x.capacity.kept_count, C == ref::kNoCapacityLimit ? s.block_size : 1);
  for (std::size_t e = 0; e < g.padded.size(); ++e) {
    const std::int64_t want = C == ref::kNoCapacityLimit ? scan.padded_count[e] - x.capacity.kept_count[e]
                              : s.pad_to_capacity        ? C - x.capacity.kept_count[e]
                                                         : 0;
    if (g.padded[e] != want) return "padded rows differ";
  }
  for (std::size_t e = 0; e < x.prob.size(); ++e)
    if (std::abs(g.prob_sum[e] - x.prob[e]) > 1e-4 * std::max(1.0, x.prob[e])) {
      os << "router-probability sum of expert " << e << ": " << g.prob_sum[e] << " vs " << x.prob[e];
      return os.str();
    }
  return "";
}

struct Case {
  const char* name;
  RoutingSpec spec;
  std::int64_t tokens;
};

RoutingSpec make(int E, int k, GateFunction gate, std::optional<double> cf) {
  RoutingSpec s;
  s.experts = E;
  s.top_k = k;
  s.gate = gate;
  s.capacity_factor = cf;
  s.distribution = Distribution::kPowerLaw;
  s.alpha = 1.0;
  return s;
}

std::vector<double> bias_for(int E) {
  std::vector<double> b;
  for (int e = 0; e < E; ++e) b.push_back(0.02 * ((e * 37) % 11) - 0.1);
  return b;
}

/// One configuration per routing path (the comment says which path route_group_token_choice takes).
std::vector<Case> cases() {
  using G = GateFunction;
  std::vector<Case> v;
  v.push_back({"small-E E8 k2 softmax (Mixtral)", make(8, 2, G::kSoftmax, 1.0), 2051});
  {
    RoutingSpec s = make(8, 2, G::kSoftmax, 1.0);
    s.renormalize = true;
    s.gshard_random_second = true;
    v.push_back({"small-E E8 k2 softmax GShard renormalised", s, 1500});
  }
  v.push_back({"small-E E8 k1 sigmoid", make(8, 1, G::kSigmoid, 1.25), 1203});
  v.push_back({"small-E E8 k3 sigmoid dropless (any k)", make(8, 3, G::kSigmoid, std::nullopt), 1100});
  {
    RoutingSpec s = make(16, 4, G::kSoftmax, 1.0);
    s.pad_to_capacity = true;
    s.scaling_factor = 2.5;
    v.push_back({"small-E E16 k4 softmax padded, scaled", s, 1601});
  }
  v.push_back({"small-E E16 k2 sigmoid", make(16, 2, G::kSigmoid, 1.1), 1500});
  v.push_back({"small-E E16 k6 softmax (any k)", make(16, 6, G::kSoftmax, 1.0), 999});
  {
    RoutingSpec s = make(8, 2, G::kSigmoid, 1.0);
    s.gate_bias = bias_for(8);
    s.renormalize = true;
    v.push_back({"generic E8 k2 sigmoid + bias (rank all)", s, 1500});
  }
  {
    RoutingSpec s = make(6, 2, G::kSoftmax, 1.0);
    s.distribution = Distribution::kHotExperts;
    s.hot_count = 2;
    s.hot_share = 0.6;
    v.push_back({"generic E6 k2 softmax hot experts (rank all, surplus random bits)", s, 1400});
  }
  v.push_back({"generic E32 k9 softmax (rank all)", make(32, 9, G::kSoftmax, 1.0), 700});
  v.push_back({"generic E64 k4 softmax (threshold)", make(64, 4, G::kSoftmax, 1.0), 1200});
  {
    RoutingSpec s = make(64, 2, G::kSigmoid, 1.0);
    s.gshard_random_second = true;
    v.push_back({"generic E64 k2 sigmoid GShard (threshold)", s, 1200});
  }
  v.push_back({"generic E256 k8 softmax (threshold)", make(256, 8, G::kSoftmax, 1.25), 600});
  {
    RoutingSpec s = make(256, 8, G::kSigmoid, 1.0);
    s.gate_bias = bias_for(256);
    s.n_groups = 8;
    s.topk_group = 4;
    s.renormalize = true;
    s.scaling_factor = 2.5;
    v.push_back({"generic E256 k8 sigmoid + bias, groups 8/4 (DeepSeek-V3: threshold, group filter)", s, 600});
  }
  {
    RoutingSpec s = make(64, 6, G::kSoftmax, 1.0);
    s.n_groups = 8;
    s.topk_group = 3;
    v.push_back({"generic E64 k6 softmax, groups 8/3 (DeepSeek-V2 group max)", s, 900});
  }
  v.push_back({"generic E128 k40 softmax (full scan)", make(128, 40, G::kSoftmax, 1.0), 300});
  {
    RoutingSpec s = make(64, 20, G::kSigmoid, 1.0);
    s.gate_bias = bias_for(64);
    s.n_groups = 8;
    s.topk_group = 4;
    v.push_back({"generic E64 k20 sigmoid + bias, groups 8/4 (masked full scan)", s, 400});
  }
  return v;
}

}  // namespace

TEST_CASE("every token-choice routing path gives the reference's selection and capacity on the same scores",
          "[models][router][oracle]") {
  for (const Case& c : cases())
    for (DropPolicy policy : {DropPolicy::kPosition, DropPolicy::kProbs})
      for (bool stored : {true, false}) {
        RoutingSpec s = c.spec;
        s.drop_policy = policy;
        RouteRequest req;
        req.tokens_per_group = c.tokens;
        req.groups = 2;
        req.step = 3;
        req.seed = 17;
        req.keep_assignments = stored;
        const int layer = 5;
        const LayerRouting l = route_layer(s, layer, req);
        INFO(c.name << ", drop policy " << (policy == DropPolicy::kProbs ? "probs" : "position")
                    << (stored ? ", stored assignments" : ", capacity while routing"));
        const ref::GateConfig cfg = gate_config(s);
        std::int64_t dropped = 0;
        for (int gi = 0; gi < req.groups; ++gi) {
          const GroupRouting& g = l.groups[static_cast<std::size_t>(gi)];
          const std::int64_t C =
              ref::capacity_for(c.tokens, s.top_k, s.experts, s.capacity_factor.value_or(0.0), s.min_capacity);
          const Expected x = reference_group(s, cfg, layer, req, gi, C);
          INFO("group " << gi);
          REQUIRE(g.capacity == C);
          REQUIRE(mismatch(s, g, x, stored) == "");
          CHECK(x.softmax_error < 1e-5);
          dropped += x.capacity.dropped_assignments;
        }
        if (s.capacity_factor) CHECK(dropped > 0);  // capacity is exercised
      }
}

TEST_CASE("the oracle comparison notices a different gate or capacity", "[models][router][oracle]") {
  // Negative controls: the same comparison against a reference with one setting changed must fail.
  RouteRequest req;
  req.tokens_per_group = 900;
  req.step = 1;
  req.seed = 4;
  for (bool stored : {true, false})
    for (const Case& c : cases()) {
      const std::string name = c.name;
      const bool v3 = name.find("DeepSeek-V3") != std::string::npos;
      if (!v3 && name.find("Mixtral") == std::string::npos) continue;
      INFO(name << (stored ? ", stored assignments" : ", capacity while routing"));
      req.keep_assignments = stored;
      const RoutingSpec& s = c.spec;
      const GroupRouting g = route_layer(s, 2, req).groups[0];
      const ref::GateConfig cfg = gate_config(s);
      const std::int64_t C = g.capacity;
      REQUIRE(mismatch(s, g, reference_group(s, cfg, 2, req, 0, C), stored) == "");
      CHECK(mismatch(s, g, reference_group(s, cfg, 2, req, 0, C - 1), stored) != "");
      RoutingSpec probs = s;
      probs.drop_policy = DropPolicy::kProbs;
      CHECK(mismatch(s, g, reference_group(probs, cfg, 2, req, 0, C), stored) != "");
      if (stored) {
        ref::GateConfig renorm = cfg;
        renorm.renormalize = !cfg.renormalize;
        CHECK(mismatch(s, g, reference_group(s, renorm, 2, req, 0, C), stored) != "");
      }
      if (v3) {
        ref::GateConfig fewer = cfg;
        fewer.topk_group = 3;  // one group fewer to choose from
        CHECK(mismatch(s, g, reference_group(s, fewer, 2, req, 0, C), stored) != "");
        RoutingSpec unbiased = s;
        unbiased.gate_bias.clear();
        CHECK(mismatch(s, g, reference_group(unbiased, cfg, 2, req, 0, C), stored) != "");
      }
    }
}
