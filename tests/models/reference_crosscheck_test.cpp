// Cross-check of the simulator's capacity enforcement against the validation-kernel CPU
// reference (validation_kernels/reference/routing_ref.hpp), the shared semantic contract.
#include <catch2/catch.hpp>

#include "models/router.hpp"
#include "sim/rng.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

using namespace moesim;
using namespace moesim::models;
namespace ref = moesim::vk::ref;

TEST_CASE("capacity formula agrees with the reference", "[models][crosscheck]") {
  for (std::int64_t T : {1, 7, 10, 100, 4096, 65536})
    for (int k : {1, 2, 6, 8})
      for (int E : {4, 8, 64, 256})
        for (double cf : {0.5, 1.0, 1.1, 1.2, 1.25, 2.0})
          if (k <= E) REQUIRE(expert_capacity(T, k, E, cf, 4) == ref::capacity_for(T, k, E, cf, 4));
}

TEST_CASE("router capacity outcome agrees with the reference on every slot", "[models][crosscheck]") {
  for (int E : {4, 16, 64})
    for (int k : {1, 2, 4})
      for (double cf : {0.5, 1.0, 1.25})
        for (DropPolicy pol : {DropPolicy::kPosition, DropPolicy::kProbs}) {
          RoutingSpec s;
          s.experts = E;
          s.top_k = k;
          s.capacity_factor = cf;
          s.drop_policy = pol;
          s.distribution = Distribution::kPowerLaw;
          s.alpha = 1.0;
          RouteRequest req;
          req.tokens_per_group = 300;
          req.seed = static_cast<std::uint64_t>(E * 100 + k);
          const LayerRouting l = route_layer(s, 0, req);
          const GroupRouting& g = l.groups[0];
          ref::Routing r;
          r.tokens = g.tokens;
          r.topk = k;
          r.expert = g.expert;
          r.weight = g.weight;
          r.score = g.weight;
          const auto c = ref::enforce_capacity(
              r, E, g.capacity, pol == DropPolicy::kPosition ? ref::DropPolicy::kPosition : ref::DropPolicy::kProbs);
          INFO("E " << E << " k " << k << " cf " << cf << " policy " << static_cast<int>(pol));
          REQUIRE(c.capacity == g.capacity);
          REQUIRE(c.keep == g.keep);
          REQUIRE(c.routed_count == g.routed);
          REQUIRE(c.kept_count == g.kept);
          REQUIRE(c.fully_dropped_tokens == g.fully_dropped_tokens);
          REQUIRE(c.dropped_assignments == l.stats.dropped);
        }
}

TEST_CASE("dropless block padding agrees with the reference scan", "[models][crosscheck]") {
  RoutingSpec s;
  s.experts = 16;
  s.top_k = 2;
  s.block_size = 128;
  RouteRequest req;
  req.tokens_per_group = 1000;
  const LayerRouting l = route_layer(s, 0, req);
  const auto scan = ref::exclusive_scan(l.groups[0].kept, 128);
  REQUIRE(scan.padding_rows == l.stats.padded);
}
