// Build + play one step for a named catalog model and parallel layout; prints build time, play
// time, op counts and the step time under SimpleCommBackend (contention-free, 50 GB/s per GPU).
// Usage: step_builder_bench MODEL DP TP EP PP MICRO_BATCHES SEQ_LEN GLOBAL_BATCH [counts]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/step_builder.hpp"

using namespace moesim;

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr, "usage: %s MODEL DP TP EP PP MB SEQ_LEN GLOBAL_BATCH [counts]\n", argv[0]);
    return 2;
  }
  const auto catalog = models::load_default_model_catalog();
  const models::ModelSpec* m = models::find_model(catalog, argv[1]);
  if (!m) return 2;
  engine::Scenario s;
  s.name = "bench";
  s.seed = 1;
  s.has_model = true;
  s.model = *m;
  s.routing = models::default_routing(*m);
  if (argc > 9 && std::string(argv[9]) == "counts") s.routing.sampling = models::SamplingMode::kCounts;
  s.parallel.dp = std::atoi(argv[2]);
  s.parallel.tp = std::atoi(argv[3]);
  s.parallel.ep = std::atoi(argv[4]);
  s.parallel.pp = std::atoi(argv[5]);
  s.parallel.micro_batches = std::atoi(argv[6]);
  s.workload.mode = engine::WorkloadMode::kTrain;
  s.workload.seq_len = std::atoll(argv[7]);
  s.workload.global_batch = std::atoll(argv[8]);
  const engine::RooflineCosts costs(engine::GpuRoofline::h100_sxm());
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = engine::thread_cpu_seconds();
  engine::BuiltStep b = engine::build_step(s, costs, {});
  const auto t1 = std::chrono::steady_clock::now();
  const double c1 = engine::thread_cpu_seconds();
  sim::Simulation sim;
  engine::SimpleCommBackend be(sim, b.collectives, 50e9, sim::SimTime::from_ps(5'000'000));
  engine::Executor ex(sim, b.graph, be, {});
  const auto r = ex.run();
  const auto t2 = std::chrono::steady_clock::now();
  const double c2 = engine::thread_cpu_seconds();
  const double world = s.parallel.world();
  std::printf("graph: %zu edges, %.1f MB\n", b.graph.edges(), b.graph.memory_bytes() / 1e6);
  std::printf("CPU: build %.3f s (routing %.3f, graph %.3f, memory %.5f), play %.3f s\n", c1 - c0, b.host_route_s,
              b.host_graph_s, b.host_memory_s, c2 - c1);
  std::printf("%s on %lld GPUs: %llu compute ops, %llu collectives (graph size %zu)\n", m->name.c_str(),
              static_cast<long long>(s.parallel.world()), static_cast<unsigned long long>(b.compute_ops),
              static_cast<unsigned long long>(b.collective_ops), b.graph.size());
  std::printf("build %.3f s, play %.3f s, step %.3f ms, MFU(model FLOPs / 989.4 TF / GPU) %.3f\n",
              std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count(),
              r.step_time.to_ms(), b.flops.model / (world * 989.4e12 * r.step_time.to_s()));
  std::printf("drop %.4f padded %.4f, peak memory %.2f GiB (stage %d), fits %d\n", b.drop_fraction(),
              b.padded_fraction(), b.memory.peak_bytes / (1024.0 * 1024 * 1024), b.memory.peak_stage,
              b.memory.fits ? 1 : 0);
  return 0;
}
