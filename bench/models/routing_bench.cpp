// Router throughput, one core: 1M tokens x top-8 over 256 experts (DeepSeek-V3 shape), small-E
// shapes (8 and 16 experts, the SIMD path in models/router/small_e_*.cpp) and, as in
// scenarios/default.yaml, one Mixtral 8x7B training step (32 MoE layers x 32 groups x 8192
// tokens = 8.4M token-layers).
// Prints wall and CPU seconds per configuration; run from a Release build:
//   ./bench/models/routing_bench [tokens]
// MOESIM_ROUTER_NO_AVX512=1 measures the 8-wide (AVX2) small-E path on AVX-512 machines,
// MOESIM_ROUTER_NO_AVX2=1 its baseline (SSE2) variant.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

#include "models/router.hpp"

using namespace moesim::models;

namespace {

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Returns wall seconds; *cpu gets process CPU seconds (the honest figure on a shared machine).
/// Routes `layers` layers of `groups` groups of tokens / groups tokens; returns wall seconds.
double time_route(const RoutingSpec& s, std::int64_t tokens, int groups, int layers, double* drop, double* cpu) {
  RouteRequest req;
  req.tokens_per_group = tokens / groups;
  req.groups = groups;
  req.seed = 1;
  req.keep_assignments = false;
  const double c0 = cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t dropped = 0, routed = 0;
  for (int layer = 0; layer < layers; ++layer) {
    const LayerRouting l = route_layer(s, layer, req);
    dropped += l.stats.dropped;
    routed += l.stats.routed;
  }
  const auto t1 = std::chrono::steady_clock::now();
  *cpu = cpu_seconds() - c0;
  *drop = routed > 0 ? static_cast<double>(dropped) / static_cast<double>(routed) : 0.0;
  return std::chrono::duration<double>(t1 - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t tokens = argc > 1 ? std::atoll(argv[1]) : 1'000'000;
  const int groups = 64;
  struct Case {
    const char* name;
    RoutingSpec spec;
    std::int64_t tokens = 0;  ///< per layer; 0: the command-line count
    int groups = 64;
    int layers = 1;
  };
  RoutingSpec base;
  base.experts = 256;
  base.top_k = 8;
  base.capacity_factor = 1.25;
  RoutingSpec softmax = base;
  RoutingSpec power = base;
  power.distribution = Distribution::kPowerLaw;
  power.alpha = 1.0;
  RoutingSpec dsv3 = base;
  dsv3.gate = GateFunction::kSigmoid;
  dsv3.n_groups = 8;
  dsv3.topk_group = 4;
  dsv3.renormalize = true;
  RoutingSpec probs = base;
  probs.drop_policy = DropPolicy::kProbs;
  RoutingSpec counts = base;
  counts.sampling = SamplingMode::kCounts;
  RoutingSpec mixtral = base;  // Mixtral 8x7B shape, as in scenarios/default.yaml
  mixtral.experts = 8;
  mixtral.top_k = 2;
  mixtral.distribution = Distribution::kPowerLaw;
  mixtral.renormalize = true;
  const auto power_law = [&](int experts, int top_k) {
    RoutingSpec s = power;
    s.experts = experts;
    s.top_k = top_k;
    return s;
  };
  const Case cases[] = {
      {"token uniform softmax position", softmax},
      {"token power_law(1) softmax", power},
      {"token uniform sigmoid group-limited 8/4 (DeepSeek-V3)", dsv3},
      {"token uniform softmax probs-policy", probs},
      {"counts (multinomial) uniform", counts},
      {"token power_law(1) softmax, 8 experts top-2 (Mixtral)", mixtral},
      {"Mixtral step: 8 experts top-2, 32 layers x 32 x 8192", mixtral, 32 * 8192, 32, 32},
      {"token power_law(1) softmax, 16 experts top-2", power_law(16, 2)},
      {"token power_law(1) softmax, 16 experts top-4", power_law(16, 4)},
      {"token power_law(1) softmax, 64 experts top-2", power_law(64, 2)},
      {"token power_law(1) softmax, 128 experts top-2", power_law(128, 2)},
  };
  std::printf("tokens=%lld experts=256 top_k=8 (unless named) groups=%d capacity_factor=1.25\n",
              static_cast<long long>(tokens), groups);
  for (const auto& c : cases) {
    double drop = 0, cpu = 0;
    const std::int64_t n = c.tokens > 0 ? c.tokens : tokens;
    const double s = time_route(c.spec, n, c.tokens > 0 ? c.groups : groups, c.layers, &drop, &cpu);
    const double token_layers = static_cast<double>(n) * c.layers;
    std::printf("%-56s wall %7.3f s  cpu %7.3f s  %7.1f ns/token-layer(cpu)  drop=%.5f\n", c.name, s, cpu,
                1e9 * cpu / token_layers, drop);
  }
  return 0;
}
