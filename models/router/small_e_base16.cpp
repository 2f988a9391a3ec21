// Small-E SIMD path, baseline instruction set (SSE2 on x86-64), 16 experts: 8 tokens per vector.
// (One file per expert count: lowering the 8-lane vectors to the baseline is the costliest part of
// the router to compile.)
#include "models/router/small_e_impl.hpp"

namespace moesim::models::detail {
namespace {

template <int E, int K>
struct Variant {
  [[gnu::noinline]] static void run(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng,
                                    sim::Rng& aux_rng, GroupRouting& g, bool fused_position) {
    small_e::route_small_e<8, E, K>(spec, plan, rng, aux_rng, g, fused_position);
  }
};

}  // namespace

void route_small_e_base16(const RoutingSpec& spec, const TokenChoicePlan& plan, sim::Rng& rng, sim::Rng& aux_rng,
                          GroupRouting& g, bool fused_position) {
  small_e::route_for_k<16, Variant>(spec, plan, rng, aux_rng, g, fused_position);
}

}  // namespace moesim::models::detail
