// Small-E SIMD path for CPUs with AVX2: 8 tokens per vector.
#include "models/router/small_e_impl.hpp"
#include "models/router/targets.hpp"

namespace moesim::models::detail {

#ifdef MOESIM_ROUTER_X86_VARIANTS
__attribute__((target("avx2"))) void route_small_e_avx2(const RoutingSpec& spec, const TokenChoicePlan& plan,
                                                        sim::Rng& rng, sim::Rng& aux_rng, GroupRouting& g,
                                                        bool fused_position) {
  if (spec.experts == 8)
    small_e::route_small_e_any_k<8, 8>(spec, plan, rng, aux_rng, g, fused_position);
  else
    small_e::route_small_e_any_k<8, 16>(spec, plan, rng, aux_rng, g, fused_position);
}
#endif

}  // namespace moesim::models::detail
