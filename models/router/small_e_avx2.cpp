// Small-E SIMD path for CPUs with AVX2: 8 tokens per vector.
#include "models/router/small_e_impl.hpp"
#include "models/router/targets.hpp"

namespace moesim::models::detail {

#ifdef MOESIM_ROUTER_X86_VARIANTS
namespace {

template <int E, int K>
struct Variant {
  [[gnu::noinline, gnu::target("avx2")]] static void run(const RoutingSpec& spec, const TokenChoicePlan& plan,
                                                         sim::Rng& rng, sim::Rng& aux_rng, GroupRouting& g,
                                                         bool fused_position) {
    small_e::route_small_e<8, E, K>(spec, plan, rng, aux_rng, g, fused_position);
  }
};

}  // namespace

[[gnu::target("avx2")]] void route_small_e_avx2(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng,
                                                sim::Rng& aux_rng, GroupRouting& g, bool fused_position) {
  if (spec.experts == 8)
    small_e::route_for_k<8, Variant>(spec, plan, rng, aux_rng, g, fused_position);
  else
    small_e::route_for_k<16, Variant>(spec, plan, rng, aux_rng, g, fused_position);
}
#endif

}  // namespace moesim::models::detail
