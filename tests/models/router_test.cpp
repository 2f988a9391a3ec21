#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>

#include "config/reader.hpp"
#include "models/placement.hpp"
#include "models/router.hpp"
#include "sim/rng.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

using namespace moesim;
using namespace moesim::models;

namespace {

ModelSpec toy_model(int layers, int experts, int top_k) {
  ModelSpec m;
  m.name = "toy";
  m.decoder_layers = layers;
  m.hidden = 128;
  m.heads = 4;
  m.kv_heads = 4;
  m.head_dim = 32;
  m.vocab = 1000;
  m.expert_ffn = 256;
  m.experts = experts;
  m.top_k = top_k;
  m.moe_layer.assign(static_cast<std::size_t>(layers), true);
  return m;
}

RoutingSpec spec_for(int experts, int top_k, std::optional<double> cf) {
  RoutingSpec s;
  s.experts = experts;
  s.top_k = top_k;
  s.capacity_factor = cf;
  return s;
}

std::string all_errors(const config::Diagnostics& d) {
  std::string s;
  for (const auto& x : d.all()) s += x.str() + "\n";
  return s;
}

}  // namespace

TEST_CASE("capacity formula is exact for decimal factors", "[models][router]") {
  REQUIRE(expert_capacity(10, 2, 4, 1.2) == 6);       // CONVENTIONS worked example
  REQUIRE(expert_capacity(100, 1, 1, 1.1) == 110);    // 1.1 is stored as 1.1000000000000000888
  REQUIRE(expert_capacity(1000, 2, 8, 1.25) == 313);  // 312.5 -> 313
  REQUIRE(expert_capacity(3, 1, 8, 1.0, 4) == 4);     // min_capacity wins
  REQUIRE(expert_capacity(3, 1, 8, std::nullopt) == kDropless);
}

TEST_CASE("worked example: batch 2, seq 5, hidden 128, 4 experts, top-2, capacity 6", "[models][router]") {
  RoutingSpec s = spec_for(4, 2, 1.2);
  s.pad_to_capacity = true;
  const int batch = 2, seq = 5, hidden = 128;
  RouteRequest req;
  req.tokens_per_group = batch * seq;
  req.groups = 1;
  req.seed = 7;
  const LayerRouting l = route_layer(s, 0, req);
  const GroupRouting& g = l.groups[0];
  REQUIRE(g.capacity == 6);
  // router output [2,5,4]: one probability per (token, expert); their sums over tokens are kept.
  REQUIRE(g.prob_sum.size() == 4);
  double psum = 0;
  for (double p : g.prob_sum) psum += p;
  REQUIRE(psum == Approx(batch * seq));
  // top-k indices [2,5,2]
  REQUIRE(g.expert.size() == static_cast<std::size_t>(batch * seq * 2));
  for (int t = 0; t < batch * seq; ++t) REQUIRE(g.expert[2 * t] != g.expert[2 * t + 1]);
  // each expert buffer [6,128]: kept + padding rows == C for every expert
  for (int e = 0; e < 4; ++e) REQUIRE(g.kept[e] + g.padded[e] == 6);
  const Placement pl = place_contiguous(4, 1);
  ByteMatrixOptions opt;
  opt.hidden = hidden;
  opt.pad_to_capacity = true;
  const auto m = build_dispatch_matrices(l, pl, opt);
  REQUIRE(m.dispatch_rows[0] == 4 * 6);
  REQUIRE(m.dispatch_bytes[0] == 4ULL * 6 * hidden * 2);
  // output [2,5,128]: every token that kept a slot gets a row back; conservation of assignments
  REQUIRE(l.stats.kept + l.stats.dropped == batch * seq * 2);
}

TEST_CASE("position and probs policies by hand", "[models][router]") {
  RoutingSpec s = spec_for(2, 1, 1.0);
  GroupRouting g;
  g.tokens = 4;
  g.top_k = 1;
  g.capacity = 2;
  g.expert = {0, 0, 0, 1};
  g.weight = {0.1f, 0.9f, 0.5f, 0.7f};
  g.prob_sum.assign(2, 0.0);
  s.drop_policy = DropPolicy::kPosition;
  enforce_capacity(g, s);
  REQUIRE(g.keep == std::vector<std::uint8_t>{1, 1, 0, 1});
  REQUIRE(g.routed == std::vector<std::int64_t>{3, 1});
  REQUIRE(g.kept == std::vector<std::int64_t>{2, 1});
  REQUIRE(g.dropped == std::vector<std::int64_t>{1, 0});
  REQUIRE(g.fully_dropped_tokens == 1);
  s.drop_policy = DropPolicy::kProbs;
  enforce_capacity(g, s);
  REQUIRE(g.keep == std::vector<std::uint8_t>{0, 1, 1, 1});
  // ties in weight go to the lower token index
  g.weight = {0.5f, 0.5f, 0.5f, 0.7f};
  enforce_capacity(g, s);
  REQUIRE(g.keep == std::vector<std::uint8_t>{1, 1, 0, 1});
  // pad_to_capacity: every buffer is C rows
  s.pad_to_capacity = true;
  enforce_capacity(g, s);
  REQUIRE(g.padded == std::vector<std::int64_t>{0, 1});
}

TEST_CASE("top-2 token keeps its other expert; losing both is a full drop", "[models][router]") {
  RoutingSpec s = spec_for(3, 2, 1.0);
  GroupRouting g;
  g.tokens = 3;
  g.top_k = 2;
  g.capacity = 1;
  g.expert = {0, 1, 0, 1, 2, 0};
  g.weight = {0.6f, 0.4f, 0.6f, 0.4f, 0.6f, 0.4f};
  g.prob_sum.assign(3, 0.0);
  enforce_capacity(g, s);
  // token 0 keeps 0 and 1; token 1 loses both (0 and 1 full); token 2 keeps 2, loses 0.
  REQUIRE(g.keep == std::vector<std::uint8_t>{1, 1, 0, 0, 1, 0});
  REQUIRE(g.fully_dropped_tokens == 1);
}

TEST_CASE("dropless pads each expert to the block size", "[models][router]") {
  RoutingSpec s = spec_for(2, 1, std::nullopt);
  s.block_size = 4;
  GroupRouting g;
  g.tokens = 5;
  g.top_k = 1;
  g.capacity = kDropless;
  g.expert = {0, 0, 0, 0, 1};
  g.weight.assign(5, 1.0f);
  g.prob_sum.assign(2, 0.0);
  enforce_capacity(g, s);
  REQUIRE(g.dropped == std::vector<std::int64_t>{0, 0});
  REQUIRE(g.padded == std::vector<std::int64_t>{0, 3});
  const LayerStats st = layer_stats({g}, 2, 1);
  REQUIRE(st.padded_fraction == Approx(3.0 / 8.0));
}

TEST_CASE("uniform routing: drop fraction matches the exact binomial expectation", "[models][router]") {
  // Per group an expert's load is Binomial(T, k/E); E[dropped] = E * E[max(0, L - C)].
  const int E = 64, k = 4;
  const std::int64_t T = 512;
  for (double cf : {1.0, 1.25}) {
    RoutingSpec s = spec_for(E, k, cf);
    RouteRequest req;
    req.tokens_per_group = T;
    req.groups = 400;
    req.seed = 11;
    const LayerRouting l = route_layer(s, 0, req);
    const std::int64_t C = l.groups[0].capacity;
    const double expect = expected_uniform_drop_fraction(T, k, E, C);
    // Sampling error from the spread of per-group drop fractions.
    double mean = 0, m2 = 0;
    for (const auto& g : l.groups) {
      std::int64_t d = 0;
      for (auto x : g.dropped) d += x;
      const double f = static_cast<double>(d) / static_cast<double>(T * k);
      mean += f;
      m2 += f * f;
    }
    const double n = static_cast<double>(l.groups.size());
    mean /= n;
    const double se = std::sqrt((m2 / n - mean * mean) / (n - 1));
    INFO("cf " << cf << " C " << C << " expected " << expect << " simulated " << mean << " se " << se);
    REQUIRE(expect > 0.005);  // the test must be able to see drops
    REQUIRE(std::abs(mean - expect) < 4 * se);
    REQUIRE(l.stats.drop_fraction == Approx(mean).epsilon(1e-9));
  }
}

TEST_CASE("counts mode agrees with the binomial expectation too", "[models][router]") {
  const int E = 64, k = 4;
  const std::int64_t T = 4096;
  RoutingSpec s = spec_for(E, k, 1.0);
  s.sampling = SamplingMode::kCounts;
  RouteRequest req;
  req.tokens_per_group = T;
  req.groups = 200;
  const LayerRouting l = route_layer(s, 0, req);
  const double expect = expected_uniform_drop_fraction(T, k, E, l.groups[0].capacity);
  REQUIRE(l.stats.fully_dropped_tokens == -1);
  REQUIRE(l.stats.routed == 200 * T * k);
  // Multinomial counts have variance T*k*(1/E)(1-1/E) instead of T*(k/E)(1-k/E): ~5% larger
  // spread, so the drop fraction lands within 10% of the exact value.
  REQUIRE(l.stats.drop_fraction == Approx(expect).epsilon(0.10));
}

TEST_CASE("routing is deterministic and independent of the number of groups", "[models][router]") {
  RoutingSpec s = spec_for(32, 4, 1.0);
  s.distribution = Distribution::kPowerLaw;
  s.alpha = 1.0;
  RouteRequest a;
  a.tokens_per_group = 256;
  a.groups = 2;
  a.seed = 5;
  RouteRequest b = a;
  b.groups = 5;
  const auto la = route_layer(s, 3, a);
  const auto lb = route_layer(s, 3, b);
  REQUIRE(la.groups[1].expert == lb.groups[1].expert);
  REQUIRE(la.groups[1].weight == lb.groups[1].weight);
  const auto la2 = route_layer(s, 3, a);
  REQUIRE(la2.groups[0].expert == la.groups[0].expert);
  RouteRequest c = a;
  c.seed = 6;
  REQUIRE(route_layer(s, 3, c).groups[0].expert != la.groups[0].expert);
}

TEST_CASE("skewed generators are skewed; uniform is balanced", "[models][router]") {
  RouteRequest req;
  req.tokens_per_group = 8192;
  req.groups = 4;
  RoutingSpec u = spec_for(64, 2, std::nullopt);
  const auto lu = route_layer(u, 0, req);
  RoutingSpec p = u;
  p.distribution = Distribution::kPowerLaw;
  p.alpha = 1.2;
  const auto lp = route_layer(p, 0, req);
  RoutingSpec h = u;
  h.distribution = Distribution::kHotExperts;
  h.hot_count = 2;
  h.hot_share = 0.4;
  const auto lh = route_layer(h, 0, req);
  REQUIRE(lu.stats.max_over_mean < 1.15);
  REQUIRE(lu.stats.aux_loss == Approx(1.0).epsilon(0.01));
  REQUIRE(lp.stats.max_over_mean > 5.0);
  REQUIRE(lp.stats.gini > 0.4);
  REQUIRE(lh.stats.max_over_mean > 5.0);
  REQUIRE(lp.stats.aux_loss > 1.5);
  // first choice follows the popularity exactly: top-1 routing share of the hottest expert
  RoutingSpec h1 = h;
  h1.top_k = 1;
  const auto l1 = route_layer(h1, 0, req);
  std::int64_t mx = 0;
  for (auto x : l1.stats.expert_routed) mx = std::max(mx, x);
  REQUIRE(static_cast<double>(mx) / static_cast<double>(l1.stats.routed) == Approx(0.2).epsilon(0.05));
}

TEST_CASE("dirichlet popularity changes from step to step", "[models][router]") {
  RoutingSpec s = spec_for(16, 2, std::nullopt);
  s.distribution = Distribution::kDirichlet;
  s.concentration = 0.5;
  const auto p0 = expert_popularity(s, 0, 0, 1);
  const auto p1 = expert_popularity(s, 0, 1, 1);
  REQUIRE(p0 != p1);
  double sum = 0;
  for (double x : p0) sum += x;
  REQUIRE(sum == Approx(1.0));
}

TEST_CASE("layer correlation 1 gives every layer the same popularity", "[models][router]") {
  RoutingSpec s = spec_for(16, 2, std::nullopt);
  s.distribution = Distribution::kPowerLaw;
  s.layer_correlation = 1.0;
  REQUIRE(expert_popularity(s, 0, 0, 1) == expert_popularity(s, 5, 0, 1));
  s.layer_correlation = 0.0;
  REQUIRE(expert_popularity(s, 0, 0, 1) != expert_popularity(s, 5, 0, 1));
}

TEST_CASE("group-limited sigmoid routing stays inside topk_group groups", "[models][router]") {
  RoutingSpec s = spec_for(256, 8, std::nullopt);
  s.gate = GateFunction::kSigmoid;
  s.n_groups = 8;
  s.topk_group = 4;
  s.renormalize = true;
  s.scaling_factor = 2.5;
  RouteRequest req;
  req.tokens_per_group = 2000;
  const auto l = route_layer(s, 0, req);
  const auto& g = l.groups[0];
  for (std::int64_t t = 0; t < g.tokens; ++t) {
    std::set<int> groups;
    double wsum = 0;
    for (int j = 0; j < 8; ++j) {
      groups.insert(g.expert[static_cast<std::size_t>(t * 8 + j)] / 32);
      wsum += g.weight[static_cast<std::size_t>(t * 8 + j)];
    }
    REQUIRE(groups.size() <= 4);
    REQUIRE(wsum == Approx(2.5).epsilon(1e-5));
  }
  // A large bias on expert 3 steers selection to it without changing its weight formula.
  s.gate_bias.assign(256, 0.0);
  s.gate_bias[3] = 10.0;
  const auto lb = route_layer(s, 0, req);
  REQUIRE(lb.stats.expert_routed[3] == req.tokens_per_group);
}

TEST_CASE("GShard random routing keeps the second expert with probability min(1, 2*g2)", "[models][router]") {
  RoutingSpec s = spec_for(16, 2, std::nullopt);
  s.gshard_random_second = true;
  s.renormalize = true;
  RouteRequest req;
  req.tokens_per_group = 20000;
  const auto l = route_layer(s, 0, req);
  const auto& g = l.groups[0];
  double expected_kept = 0;
  std::int64_t kept = 0;
  for (std::int64_t t = 0; t < g.tokens; ++t) {
    if (g.expert[static_cast<std::size_t>(2 * t + 1)] >= 0) ++kept;
    // with renormalisation the first weight is g1 = 1 - g2 of the pair (second may be unrouted)
    const double g1 = g.weight[static_cast<std::size_t>(2 * t)];
    expected_kept += std::min(1.0, 2.0 * (1.0 - g1));
  }
  REQUIRE(g.unrouted_slots == g.tokens - kept);
  REQUIRE(static_cast<double>(kept) == Approx(expected_kept).epsilon(0.03));
}

TEST_CASE("expert choice: every expert takes exactly C tokens", "[models][router]") {
  RoutingSpec s = spec_for(8, 2, 1.0);
  s.expert_choice = true;
  RouteRequest req;
  req.tokens_per_group = 64;
  const auto l = route_layer(s, 0, req);
  for (auto r : l.stats.expert_routed) REQUIRE(r == 16);  // C = 1.0*64*2/8
  REQUIRE(l.stats.dropped == 0);
  REQUIRE(l.stats.fully_dropped_tokens >= 0);
}

TEST_CASE("balanced pitfall: 256 experts, top-8, EP16, 16 tokens use every rank", "[models][router]") {
  const int E = 256, k = 8, R = 16;
  const Placement pl = place_contiguous(E, R);
  // The naive pattern expert = (t*k + j) mod E fills experts 0..127 only: ranks 8..15 idle.
  std::vector<int> naive_rank_rows(R, 0);
  for (int a = 0; a < 16 * k; ++a)
    ++naive_rank_rows[static_cast<std::size_t>(pl.replicas[static_cast<std::size_t>(a % E)][0])];
  int naive_idle = 0;
  for (int x : naive_rank_rows) naive_idle += x == 0;
  REQUIRE(naive_idle == 8);
  for (std::int64_t T : {1, 2, 16, 31}) {
    RoutingSpec s = spec_for(E, k, std::nullopt);
    s.distribution = Distribution::kBalanced;
    RouteRequest req;
    req.tokens_per_group = T;
    req.ep_ranks = R;
    const auto l = route_layer(s, 0, req);
    const auto loads = rank_loads(l, pl);
    std::int64_t mn = loads[0], mx = loads[0];
    for (auto x : loads) {
      mn = std::min(mn, x);
      mx = std::max(mx, x);
    }
    INFO("T " << T);
    REQUIRE(mx - mn <= 1);  // as even as T*k rows over 16 ranks allows
    if (T * k >= R) REQUIRE(mn > 0);
    for (std::int64_t t = 0; t < T; ++t) {  // no token repeats an expert
      std::set<int> ex(l.groups[0].expert.begin() + t * k, l.groups[0].expert.begin() + (t + 1) * k);
      REQUIRE(ex.size() == static_cast<std::size_t>(k));
    }
  }
}

TEST_CASE("parse_routing reports bad input with locations", "[models][router]") {
  const ModelSpec m = toy_model(2, 8, 2);
  {
    auto doc = config::Document::load_string("routing:\n  capacity_factor: 0\n  top_k: 9\n", "scen.yaml");
    config::Diagnostics d;
    parse_routing(doc.root(d).child("routing"), m);
    const std::string e = all_errors(d);
    INFO(e);
    REQUIRE(e.find("scen.yaml:2:20: routing.capacity_factor") != std::string::npos);
    REQUIRE(e.find("scen.yaml:3:10: routing.top_k: top_k (9) exceeds the number of experts (8)") != std::string::npos);
  }
  {
    auto doc = config::Document::load_string("routing:\n  capacity_factor: none\n  drop_policy: prob\n", "s2.yaml");
    config::Diagnostics d;
    const RoutingSpec r = parse_routing(doc.root(d).child("routing"), m);
    REQUIRE(r.dropless());
    REQUIRE(all_errors(d).find("s2.yaml:3:16: routing.drop_policy") != std::string::npos);
  }
  {
    auto doc = config::Document::load_string("routing:\n  capacity_factor: 1.25\n  drop_policy: probs\n", "ok.yaml");
    config::Diagnostics d;
    const RoutingSpec r = parse_routing(doc.root(d).child("routing"), m);
    REQUIRE(d.empty());
    REQUIRE(*r.capacity_factor == 1.25);
    REQUIRE(r.drop_policy == DropPolicy::kProbs);
  }
  REQUIRE(placement_problem(8, 3, 0).has_value());
  REQUIRE_FALSE(placement_problem(8, 4, 0).has_value());
  REQUIRE_FALSE(placement_problem(8, 3, 1).has_value());
}

TEST_CASE("trace replay and trace errors name file and line", "[models][router]") {
  const ModelSpec m = toy_model(2, 4, 2);
  const auto dir = std::filesystem::temp_directory_path();
  const auto write = [&](const std::string& name, const std::string& text) {
    const std::string path = (dir / name).string();
    std::ofstream(path) << text;
    return path;
  };
  const std::string good =
      write("moesim_trace_ok.csv", "# recorded\nlayer,token,expert_0,expert_1\n0,0,1,2\n0,1,3,0\n1,0,2,1\n");
  const RoutingTrace t = load_routing_trace(good, m, 2);
  REQUIRE(t.tokens(0) == 2);
  RoutingSpec s = spec_for(4, 2, 1.0);
  s.distribution = Distribution::kTrace;
  RouteRequest req;
  req.tokens_per_group = 3;  // wraps around the 2 recorded tokens of layer 0
  const auto l = route_layer(s, 0, req, &t);
  REQUIRE(l.groups[0].expert == std::vector<std::int32_t>{1, 2, 3, 0, 1, 2});

  const auto expect_error = [&](const std::string& text, const std::string& needle) {
    const std::string path = write("moesim_trace_bad.csv", text);
    try {
      load_routing_trace(path, m, 2);
      FAIL("no error for: " << text);
    } catch (const config::ConfigError& e) {
      INFO(e.what());
      REQUIRE(std::string(e.what()).find(path + ":" + needle) != std::string::npos);
    }
  };
  expect_error("layer,token,expert_0,expert_1\n0,0,1,7\n1,0,0,1\n", "2:0: routing.trace: expert id 7 out of range");
  expect_error("layer,token,expert_0,expert_1\n0,0,1,2\n", "1:0: routing.trace: wrong number of layers");
  expect_error("layer,token,expert_0,expert_1\n0,0,1,2\n5,0,1,2\n", "3:0: routing.trace: layer 5 is out of range");
  expect_error("layer,token,expert_0\n", "1:0: routing.trace: header must be");
  expect_error("layer,token,expert_0,expert_1\n0,0,1,1\n", "2:0: routing.trace: expert id 1 repeated");
}

TEST_CASE("route_step covers every MoE layer and summarises", "[models][router]") {
  ModelSpec m = toy_model(4, 8, 2);
  m.moe_layer = {false, true, false, true};
  m.dense_ffn = 512;
  RoutingSpec s = spec_for(8, 2, 1.0);
  RouteRequest req;
  req.tokens_per_group = 64;
  req.groups = 2;
  const StepRouting st = route_step(m, s, req);
  REQUIRE(st.layers.size() == 2);
  REQUIRE(st.layers[1].layer == 3);
  REQUIRE(st.routed == 2 * 2 * 64 * 2);
  std::ostringstream os;
  format_routing_summary(os, m, s, st);
  REQUIRE(os.str().find("sampling mode token") != std::string::npos);
  REQUIRE(os.str().find("params total") != std::string::npos);
}

TEST_CASE("metrics on a hand-made load", "[models][router]") {
  GroupRouting g;
  g.tokens = 4;
  g.top_k = 1;
  g.routed = {4, 0, 0, 0};
  g.kept = {4, 0, 0, 0};
  g.dropped = {0, 0, 0, 0};
  g.padded = {0, 0, 0, 0};
  g.prob_sum = {4, 0, 0, 0};
  const LayerStats s = layer_stats({g}, 4, 1);
  REQUIRE(s.max_over_mean == Approx(4.0));
  REQUIRE(s.cv == Approx(std::sqrt(3.0)));
  REQUIRE(s.gini == Approx(0.75));
  REQUIRE(s.aux_loss == Approx(4.0));
  REQUIRE(s.entropy == Approx(0.0));
}

// ---------------------------------------------------------------------------------------------
// The vectorised token-choice sampler against a plain reference: Gumbel logits drawn in double
// from sim::Rng, gated and selected by the validation-kernel reference (ref::gate_topk). Same
// distribution, different random stream, so the comparison is statistical (chi-square), with a
// negative control that must fail.
// ---------------------------------------------------------------------------------------------

namespace {

struct RefCounts {
  std::vector<double> first, inclusion, prob;  ///< [E]: first choices, top-k memberships, router probability sums
  std::vector<double> prob2;                   ///< [E]: sums of squared router probabilities (reference only)
};

RefCounts reference_route(const RoutingSpec& s, const std::vector<double>& p, std::int64_t tokens, std::uint64_t seed) {
  const int E = s.experts, k = s.top_k;
  const bool sigmoid = s.gate == GateFunction::kSigmoid;
  vk::ref::GateConfig cfg;
  cfg.kind = sigmoid ? vk::ref::GateKind::kSigmoidBias : vk::ref::GateKind::kSoftmax;
  cfg.num_experts = E;
  cfg.topk = k;
  cfg.num_groups = s.n_groups;
  cfg.topk_group = s.n_groups > 1 ? s.topk_group : 1;
  std::vector<float> bias;
  for (double b : s.gate_bias) bias.push_back(static_cast<float>(b));
  sim::Rng rng(seed, "reference-router");
  RefCounts c{std::vector<double>(E, 0.0), std::vector<double>(E, 0.0), std::vector<double>(E, 0.0),
              std::vector<double>(E, 0.0)};
  constexpr std::int64_t kChunk = 1024;
  std::vector<float> logits(static_cast<std::size_t>(kChunk * E));
  std::vector<double> score(E);
  for (std::int64_t t0 = 0; t0 < tokens; t0 += kChunk) {
    const std::int64_t n = std::min(kChunk, tokens - t0);
    for (std::int64_t t = 0; t < n; ++t) {
      double sum = 0;
      for (int e = 0; e < E; ++e) {
        const double logit = std::log(sigmoid ? E * p[e] : p[e]) + rng.gumbel();
        logits[static_cast<std::size_t>(t * E + e)] = static_cast<float>(logit);
        score[e] = sigmoid ? 1.0 / (1.0 + std::exp(-logit)) : std::exp(logit);
        sum += score[e];
      }
      for (int e = 0; e < E; ++e) {
        c.prob[e] += score[e] / sum;
        c.prob2[e] += (score[e] / sum) * (score[e] / sum);
      }
    }
    const vk::ref::Routing r = vk::ref::gate_topk(logits.data(), n, cfg, bias.empty() ? nullptr : bias.data());
    for (std::int64_t t = 0; t < n; ++t) {
      c.first[r.expert[static_cast<std::size_t>(t * k)]] += 1;
      for (int j = 0; j < k; ++j) c.inclusion[r.expert[static_cast<std::size_t>(t * k + j)]] += 1;
    }
  }
  return c;
}

RefCounts fast_route(const RoutingSpec& s, std::int64_t tokens, std::uint64_t seed) {
  RouteRequest req;
  req.tokens_per_group = tokens / 8;
  req.groups = 8;
  req.seed = seed;
  const LayerRouting l = route_layer(s, 0, req);
  RefCounts c{std::vector<double>(s.experts, 0.0),
              std::vector<double>(s.experts, 0.0),
              std::vector<double>(s.experts, 0.0),
              {}};
  for (const auto& g : l.groups) {
    for (std::int64_t t = 0; t < g.tokens; ++t) {
      c.first[g.expert[t * s.top_k]] += 1;
      for (int j = 0; j < s.top_k; ++j) c.inclusion[g.expert[t * s.top_k + j]] += 1;
    }
    for (int e = 0; e < s.experts; ++e) c.prob[e] += g.prob_sum[e];
  }
  return c;
}

/// Two-sample chi-square statistic for count vectors a and b (cells with no counts skipped).
double chi2_two_sample(const std::vector<double>& a, const std::vector<double>& b, int* df) {
  double A = 0, B = 0;
  for (double x : a) A += x;
  for (double x : b) B += x;
  const double ka = std::sqrt(B / A), kb = std::sqrt(A / B);
  double chi = 0;
  *df = -1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] + b[i] == 0) continue;
    chi += (ka * a[i] - kb * b[i]) * (ka * a[i] - kb * b[i]) / (a[i] + b[i]);
    ++*df;
  }
  return chi;
}

/// Chi-square upper quantile at z standard deviations (Wilson-Hilferty); z = 3.72 is p = 1e-4.
double chi2_critical(int df, double z = 3.72) {
  const double h = 2.0 / (9.0 * df);
  return df * std::pow(1 - h + z * std::sqrt(h), 3);
}

}  // namespace

TEST_CASE("fast token-choice sampler draws from the same distribution as the reference", "[models][router]") {
  struct Case {
    const char* name;
    RoutingSpec spec;
    std::int64_t tokens;
  };
  std::vector<Case> cases;
  {  // Mixtral shape: 8 experts, top-2, skewed popularity (no candidate threshold: full scan)
    RoutingSpec s = spec_for(8, 2, std::nullopt);
    s.distribution = Distribution::kPowerLaw;
    s.alpha = 1.0;
    cases.push_back({"softmax E8 k2 power_law", s, 160000});
  }
  {  // DeepSeek-V3 shape at E=256: candidate thresholds
    RoutingSpec s = spec_for(256, 8, std::nullopt);
    s.distribution = Distribution::kPowerLaw;
    s.alpha = 1.2;
    cases.push_back({"softmax E256 k8 power_law", s, 64000});
  }
  {  // sigmoid + bias + group-limited (8 groups, 3 kept), skewed
    RoutingSpec s = spec_for(64, 6, std::nullopt);
    s.distribution = Distribution::kPowerLaw;
    s.alpha = 0.8;
    s.gate = GateFunction::kSigmoid;
    s.n_groups = 8;
    s.topk_group = 3;
    s.renormalize = true;
    for (int e = 0; e < 64; ++e) s.gate_bias.push_back(0.02 * ((e * 37) % 11) - 0.1);
    cases.push_back({"sigmoid+bias E64 k6 groups 8/3", s, 96000});
  }
  for (const auto& c : cases) {
    const auto p = expert_popularity(c.spec, 0, 0, 3);
    const RefCounts fast = fast_route(c.spec, c.tokens, 3);
    const RefCounts ref = reference_route(c.spec, p, c.tokens, 4);
    int df1 = 0, df2 = 0;
    const double chi_first = chi2_two_sample(fast.first, ref.first, &df1);
    const double chi_incl = chi2_two_sample(fast.inclusion, ref.inclusion, &df2);
    INFO(c.name << ": first-choice chi2 " << chi_first << " (df " << df1 << ", critical " << chi2_critical(df1)
                << "), inclusion chi2 " << chi_incl << " (df " << df2 << ", critical " << chi2_critical(df2) << ")");
    CHECK(chi_first < chi2_critical(df1));
    CHECK(chi_incl < chi2_critical(df2));
    // Mean router probability per expert (the aux-loss P_i) agrees within 4.5 standard errors of
    // the difference (the reference's per-token spread stands in for both samples').
    int far = 0;
    for (int e = 0; e < c.spec.experts; ++e) {
      const double n = static_cast<double>(c.tokens);
      const double a = fast.prob[e] / n, b = ref.prob[e] / n;
      const double se = std::sqrt(2.0 * std::max(0.0, ref.prob2[e] / n - b * b) / n);
      if (std::abs(a - b) > 4.5 * se) ++far;
    }
    CHECK(far == 0);
    if (c.spec.gate == GateFunction::kSoftmax) {
      // Gumbel-max: the first choice is exactly Categorical(p); goodness of fit against p itself.
      double chi = 0;
      for (int e = 0; e < c.spec.experts; ++e) {
        const double want = p[e] * c.tokens;
        chi += (fast.first[e] - want) * (fast.first[e] - want) / want;
      }
      CHECK(chi < chi2_critical(c.spec.experts - 1));
    }
    // Negative control: the same test tells a slightly different popularity apart.
    RoutingSpec other = c.spec;
    other.alpha *= 1.15;
    const RefCounts wrong = reference_route(other, expert_popularity(other, 0, 0, 3), c.tokens, 4);
    int df3 = 0;
    const double chi_wrong = chi2_two_sample(fast.inclusion, wrong.inclusion, &df3);
    CHECK(chi_wrong > chi2_critical(df3));
  }
}

TEST_CASE("capacity applied while routing equals capacity applied afterwards", "[models][router]") {
  for (int E : {8, 64}) {
    RoutingSpec s = spec_for(E, E == 8 ? 2 : 4, 1.0);
    s.distribution = Distribution::kPowerLaw;
    s.alpha = 1.0;
    for (bool gshard : {false, true}) {
      if (gshard && s.top_k != 2) continue;
      s.gshard_random_second = gshard;
      RouteRequest req;
      req.tokens_per_group = 3000;
      req.groups = 3;
      req.seed = 9;
      const LayerRouting stored = route_layer(s, 1, req);
      req.keep_assignments = false;  // fused path
      const LayerRouting fused = route_layer(s, 1, req);
      REQUIRE(stored.stats.dropped > 0);
      for (std::size_t g = 0; g < stored.groups.size(); ++g) {
        const auto& a = stored.groups[g];
        const auto& b = fused.groups[g];
        REQUIRE(b.expert.empty());
        REQUIRE(a.routed == b.routed);
        REQUIRE(a.kept == b.kept);
        REQUIRE(a.dropped == b.dropped);
        REQUIRE(a.padded == b.padded);
        REQUIRE(a.fully_dropped_tokens == b.fully_dropped_tokens);
        REQUIRE(a.unrouted_slots == b.unrouted_slots);
        REQUIRE(a.prob_sum == b.prob_sum);
      }
    }
  }
}

namespace {

/// FNV-1a over every output of token-choice routing for small-E configurations (E = 8 and 16, the
/// SIMD path, models/router/small_e_*.cpp), both gates, k = 1..4, with and without per-slot
/// arrays, GShard, renormalisation, dropless and padded capacity, group sizes that are not a
/// multiple of 16.
std::uint64_t small_e_fingerprint() {
  std::uint64_t h = 1469598103934665603ULL;
  const auto mix = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ c[i]) * 1099511628211ULL;
  };
  const auto mixv = [&](const auto& v) {
    if (!v.empty()) mix(v.data(), v.size() * sizeof(v[0]));
  };
  for (int E : {8, 16})
    for (int k : {1, 2, 3, 4})
      for (int gate = 0; gate < 2; ++gate)
        for (int variant = 0; variant < 4; ++variant)
          for (bool keep : {true, false}) {
            RoutingSpec s;
            s.experts = E;
            s.top_k = k;
            s.distribution = variant == 3 ? Distribution::kUniform : Distribution::kPowerLaw;
            s.alpha = 1.0;
            s.gate = gate == 1 ? GateFunction::kSigmoid : GateFunction::kSoftmax;
            s.capacity_factor = variant == 1 ? std::nullopt : std::optional<double>(1.0);
            if (variant == 2) {
              s.renormalize = true;
              s.scaling_factor = 2.5;
              s.gshard_random_second = k == 2;
            }
            if (variant == 3) s.pad_to_capacity = true;
            RouteRequest req;
            req.tokens_per_group = 1003 + 64 * variant;
            req.groups = 2;
            req.seed = 5;
            req.step = variant;
            req.keep_assignments = keep;
            const LayerRouting l = route_layer(s, 3, req);
            for (const auto& g : l.groups) {
              mixv(g.expert);
              mixv(g.weight);
              mixv(g.keep);
              mixv(g.routed);
              mixv(g.kept);
              mixv(g.dropped);
              mixv(g.padded);
              mixv(g.prob_sum);
              mix(&g.fully_dropped_tokens, sizeof g.fully_dropped_tokens);
              mix(&g.unrouted_slots, sizeof g.unrouted_slots);
            }
          }
  return h;
}

void require_same_groups(const LayerRouting& a, const LayerRouting& b) {
  REQUIRE(a.groups.size() == b.groups.size());
  for (std::size_t g = 0; g < a.groups.size(); ++g) {
    const auto& x = a.groups[g];
    const auto& y = b.groups[g];
    REQUIRE(x.expert == y.expert);
    REQUIRE(x.weight == y.weight);
    REQUIRE(x.keep == y.keep);
    REQUIRE(x.routed == y.routed);
    REQUIRE(x.kept == y.kept);
    REQUIRE(x.dropped == y.dropped);
    REQUIRE(x.padded == y.padded);
    REQUIRE(x.prob_sum == y.prob_sum);
    REQUIRE(x.fully_dropped_tokens == y.fully_dropped_tokens);
    REQUIRE(x.unrouted_slots == y.unrouted_slots);
  }
}

}  // namespace

// E = 8 and 16 take a SIMD path (models/router/small_e_impl.hpp) that must reproduce the
// generic per-token loop bit for bit. The fingerprint below was computed with the generic loop
// alone (commit ae703e6, before the SIMD path existed); ctest also runs these tests with
// MOESIM_ROUTER_NO_AVX512=1 and with MOESIM_ROUTER_NO_AVX2=1, so on AVX-512 machines all three
// variants (16-wide, 8-wide AVX2, 8-wide baseline) are checked.
TEST_CASE("small-E SIMD routing path: the bits of the generic loop", "[models][router]") {
  REQUIRE(small_e_fingerprint() == 0x8ae69e842a7d227dULL);
}

TEST_CASE("small-E SIMD routing path equals the generic loop on the same run", "[models][router]") {
  // A sigmoid gate with an all-zero gate_bias takes the generic loop (biased keys s + 0, which
  // are the scores themselves); without gate_bias it takes the SIMD path.
  for (int E : {8, 16})
    for (int k : {1, 2, 4})
      for (bool keep : {true, false})
        for (int cf = 0; cf < 2; ++cf) {
          RoutingSpec fast;
          fast.experts = E;
          fast.top_k = k;
          fast.gate = GateFunction::kSigmoid;
          fast.distribution = Distribution::kPowerLaw;
          fast.alpha = 1.3;
          fast.capacity_factor = cf == 0 ? std::optional<double>(1.0) : std::nullopt;
          fast.renormalize = k > 1;
          fast.gshard_random_second = k == 2 && !keep;
          RoutingSpec generic = fast;
          generic.gate_bias.assign(static_cast<std::size_t>(E), 0.0);
          RouteRequest req;
          req.tokens_per_group = 2051;  // not a multiple of the 8- or 16-token chunks
          req.groups = 3;
          req.seed = 21;
          req.keep_assignments = keep;
          const LayerRouting a = route_layer(fast, 2, req);
          const LayerRouting b = route_layer(generic, 2, req);
          if (cf == 0) REQUIRE(a.stats.dropped > 0);
          require_same_groups(a, b);
        }
}

namespace {

RoutingSpec counts_spec(int E, int k, GateFunction gate) {
  RoutingSpec s;
  s.experts = E;
  s.top_k = k;
  s.gate = gate;
  s.distribution = Distribution::kPowerLaw;
  s.alpha = 1.2;
  s.sampling = SamplingMode::kCounts;
  return s;
}

/// Largest |a_e - b_e| in units of the standard error of two independent pilots of ta and tb
/// tokens (an expert's inclusion is Bernoulli(k * share) per token).
double max_z(const std::vector<double>& a, const std::vector<double>& b, int k, double ta, double tb) {
  double z = 0;
  for (std::size_t e = 0; e < a.size(); ++e) {
    const double pi = std::clamp(k * 0.5 * (a[e] + b[e]), 1e-6, 1 - 1e-6);
    const double var = pi * (1 - pi) / (k * k) * (1 / ta + (tb > 0 ? 1 / tb : 0.0));
    z = std::max(z, std::fabs(a[e] - b[e]) / std::sqrt(var));
  }
  return z;
}

}  // namespace

TEST_CASE("counts shares: the shape pilot, permuted, matches a per-layer pilot", "[models][router]") {
  const RoutingSpec s = counts_spec(64, 6, GateFunction::kSoftmax);
  InclusionShareCache cache;
  for (int layer : {0, 5}) {
    const auto p = expert_popularity(s, layer, 3, 11);
    const auto shares = counts_inclusion_shares(s, layer, 3, 11, &cache);
    REQUIRE(shares == counts_inclusion_shares(s, layer, 3, 11));  // cache changes no bit
    REQUIRE(std::accumulate(shares.begin(), shares.end(), 0.0) == Approx(1.0).epsilon(1e-12));
    const auto direct = pilot_inclusion_shares(s, p, layer, 3, 11, 65536);
    CHECK(max_z(shares, direct, 6, 131072, 65536) < 5.0);
    // The permutation follows the layer: the most popular expert has the largest share.
    const auto top = std::max_element(p.begin(), p.end()) - p.begin();
    CHECK(std::max_element(shares.begin(), shares.end()) - shares.begin() == top);
  }
  REQUIRE(cache.entries.size() == 1);  // one pilot served both layers
  // Layers differ (different permutations), steps use their own pilot.
  REQUIRE(counts_inclusion_shares(s, 0, 3, 11) != counts_inclusion_shares(s, 5, 3, 11));
  counts_inclusion_shares(s, 0, 4, 11, &cache);
  REQUIRE(cache.entries.size() == 2);
}

TEST_CASE("counts shares: exact Plackett-Luce forms for top-1 and top-2", "[models][router]") {
  for (GateFunction gate : {GateFunction::kSoftmax, GateFunction::kSigmoid}) {
    RoutingSpec s1 = counts_spec(8, 1, gate);
    REQUIRE(counts_inclusion_shares(s1, 2, 0, 5) == expert_popularity(s1, 2, 0, 5));
    RoutingSpec s2 = counts_spec(8, 2, gate);
    s2.alpha = 2.0;
    const auto p = expert_popularity(s2, 2, 0, 5);
    const auto exact = counts_inclusion_shares(s2, 2, 0, 5);
    REQUIRE(std::accumulate(exact.begin(), exact.end(), 0.0) == Approx(1.0).epsilon(1e-12));
    CHECK(max_z(exact, pilot_inclusion_shares(s2, p, 2, 0, 5, 262144), 2, 262144, 0) < 5.0);
    // Not simply p: the top expert's share is capped by one slot per token (< 1/k = 0.5 of shares).
    const auto top = std::max_element(p.begin(), p.end()) - p.begin();
    CHECK(exact[static_cast<std::size_t>(top)] < p[static_cast<std::size_t>(top)]);
  }
  RoutingSpec all = counts_spec(8, 8, GateFunction::kSoftmax);
  REQUIRE(counts_inclusion_shares(all, 0, 0, 5) == std::vector<double>(8, 0.125));
}

TEST_CASE("counts shares: group-limited or biased gates keep the per-layer pilot", "[models][router]") {
  RoutingSpec g = counts_spec(64, 6, GateFunction::kSigmoid);
  g.n_groups = 8;
  g.topk_group = 3;
  RoutingSpec b = counts_spec(64, 6, GateFunction::kSigmoid);
  b.gate_bias.assign(64, 0.0);
  b.gate_bias[7] = 0.3;
  RoutingSpec eq = counts_spec(64, 6, GateFunction::kSigmoid);
  eq.gate_bias.assign(64, 0.25);  // equal biases: still symmetric
  for (const RoutingSpec& s : {g, b}) {
    InclusionShareCache cache;
    for (int layer : {1, 2}) {
      const auto p = expert_popularity(s, layer, 0, 9);
      REQUIRE(counts_inclusion_shares(s, layer, 0, 9, &cache) == pilot_inclusion_shares(s, p, layer, 0, 9));
    }
    REQUIRE(cache.entries.empty());
  }
  InclusionShareCache cache;
  counts_inclusion_shares(eq, 1, 0, 9, &cache);
  counts_inclusion_shares(eq, 2, 0, 9, &cache);
  REQUIRE(cache.entries.size() == 1);
  const auto p = expert_popularity(eq, 1, 0, 9);
  CHECK(max_z(counts_inclusion_shares(eq, 1, 0, 9, &cache), pilot_inclusion_shares(eq, p, 1, 0, 9, 65536), 6, 131072,
              65536) < 5.0);
}
