#include <catch2/catch.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/pipeline.hpp"
#include "engine/scenario.hpp"

using namespace moesim::engine;

namespace {

/// Plays every rank's schedule with fixed per-chunk costs and zero transfer time; returns the
/// makespan, or -1 when the schedules deadlock. Forward (mb, v) needs forward (mb, v - 1);
/// backward (mb, v) needs forward (mb, v) and backward (mb, v + 1). Each rank runs its actions
/// in order, one at a time, so the times do not depend on the order ranks are visited in.
double play(int pp, int vpp, int M, double tf, double tb, bool train = true) {
  const int V = pp * vpp;
  std::vector<std::vector<PipelineAction>> sched;
  for (int p = 0; p < pp; ++p) sched.push_back(pipeline_schedule(pp, vpp, M, p, train));
  std::vector<std::vector<double>> fwd(M, std::vector<double>(V, -1)), bwd(M, std::vector<double>(V, -1));
  std::vector<std::size_t> next(pp, 0);
  std::vector<double> free_at(pp, 0);
  double end = 0;
  for (bool progress = true; progress;) {
    progress = false;
    for (int p = 0; p < pp; ++p) {
      while (next[p] < sched[p].size()) {
        const PipelineAction a = sched[p][next[p]];
        const int v = a.chunk * pp + p;
        double ready = 0;
        if (a.forward) {
          if (v > 0 && fwd[a.micro_batch][v - 1] < 0) break;
          if (v > 0) ready = fwd[a.micro_batch][v - 1];
        } else {
          if (fwd[a.micro_batch][v] < 0) break;
          ready = fwd[a.micro_batch][v];
          if (v < V - 1) {
            if (bwd[a.micro_batch][v + 1] < 0) break;
            ready = std::max(ready, bwd[a.micro_batch][v + 1]);
          }
        }
        const double t = std::max(ready, free_at[p]) + (a.forward ? tf : tb);
        (a.forward ? fwd : bwd)[a.micro_batch][v] = t;
        free_at[p] = t;
        end = std::max(end, t);
        ++next[p];
        progress = true;
      }
    }
  }
  for (int p = 0; p < pp; ++p)
    if (next[p] != sched[p].size()) return -1;
  return end;
}

}  // namespace

TEST_CASE("pipeline layout strings", "[pipeline]") {
  REQUIRE(parse_pipeline_layout("Ett|tt|tt|ttL", 4, 8) == std::vector<int>{2, 2, 2, 2});
  REQUIRE(parse_pipeline_layout("E|t*4|t*4|L", 4, 8) == std::vector<int>{0, 4, 4, 0});
  // DeepSeek-V3-style: 3 layers with the embedding, then pairs, the loss alone in the last stage.
  const std::vector<int> ds = parse_pipeline_layout("Et*3|(tt|)*29,L", 31, 61);
  REQUIRE(ds.size() == 31);
  REQUIRE(ds.front() == 3);
  REQUIRE(ds[1] == 2);
  REQUIRE(ds.back() == 0);
  REQUIRE(parse_pipeline_layout("E (t t|)*2 ,t tL", 3, 6) == std::vector<int>{2, 2, 2});
  REQUIRE(parse_pipeline_layout("E((t)*2|)*2tL", 3, 5) == std::vector<int>{2, 2, 1});

  const auto fails = [](const std::string& s, int V, int layers, const std::string& why) {
    try {
      parse_pipeline_layout(s, V, layers);
      FAIL("accepted " << s);
    } catch (const std::invalid_argument& e) {
      INFO(e.what());
      REQUIRE(std::string(e.what()).find(why) != std::string::npos);
    }
  };
  fails("Et*3|(tt|)*29,m|L", 32, 61, "multi-token-prediction");
  fails("tt|ttL", 2, 4, "must start with 'E'");
  fails("Ett|tt", 2, 4, "must end with 'L'");
  fails("Ett|ttL|", 2, 4, "must be the last symbol");
  fails("tEt|ttL", 2, 4, "must open the first stage");
  fails("Ett|ttL", 3, 4, "has 2 stages but pp x vpp = 3");
  fails("Ett|ttL", 2, 5, "places 4 decoder layers but the model has 5");
  fails("Et*|ttL", 2, 4, "repetition count");
  fails("Et*0|ttL", 2, 4, "must be >= 1");
  fails("Etx|ttL", 2, 4, "unexpected 'x'");
  fails("E(tt|ttL", 2, 4, "never closed");
  fails("Ett)|ttL", 2, 4, "without a matching");
  fails("E(t*100000)*100000L", 1, 1, "longer than");
}

TEST_CASE("even pipeline split: Megatron's rules", "[pipeline]") {
  REQUIRE(even_pipeline_split(8, 4, false, false, true) == std::vector<int>{2, 2, 2, 2});
  REQUIRE(even_pipeline_split(9, 4, false, false, false) == std::vector<int>{3, 2, 2, 2});
  REQUIRE_THROWS_WITH(even_pipeline_split(9, 4, false, false, true), Catch::Contains("do not split evenly"));
  // --account-for-embedding-in-pipeline-split: the embedding is one of the first stage's slots.
  REQUIRE(even_pipeline_split(7, 4, true, false, true) == std::vector<int>{1, 2, 2, 2});
  REQUIRE(even_pipeline_split(6, 4, true, true, true) == std::vector<int>{1, 2, 2, 1});
  REQUIRE_THROWS_WITH(even_pipeline_split(6, 4, true, false, true), Catch::Contains("+ the embedding"));
  // A stage left without a decoder layer is refused.
  REQUIRE_THROWS_WITH(even_pipeline_split(2, 4, false, false, false), Catch::Contains("without a decoder layer"));
  // ... but the first / last may hold the embedding / the loss alone (Qwen3-235B at PP32 VPP3:
  // 94 layers + 2 = 96 slots, one per virtual stage).
  REQUIRE(even_pipeline_split(2, 4, true, true, true) == std::vector<int>{0, 1, 1, 0});
  const auto q = even_pipeline_split(94, 96, true, true, true);
  REQUIRE(q.front() == 0);
  REQUIRE(q.back() == 0);
  REQUIRE(q[1] == 1);
  REQUIRE_THROWS_WITH(even_pipeline_split(2, 4, true, false, false), Catch::Contains("without a decoder layer"));

  ParallelSpec p;
  p.pp = 2;
  p.vpp = 2;
  REQUIRE(pipeline_stage_layers(p, 8) == std::vector<int>{2, 2, 2, 2});
  REQUIRE_THROWS(pipeline_stage_layers(p, 6));
  p.vpp = 1;
  REQUIRE(pipeline_stage_layers(p, 5) == std::vector<int>{3, 2});
  p.stage_layers = {1, 4};
  REQUIRE(pipeline_stage_layers(p, 5) == std::vector<int>{1, 4});
  REQUIRE(virtual_stage_ranges({1, 4, 0, 2}) == std::vector<std::pair<int, int>>{{0, 1}, {1, 5}, {5, 5}, {5, 7}});
}

TEST_CASE("pipeline schedules: every pass once, no deadlock, the closed-form makespan", "[pipeline]") {
  for (int pp : {1, 2, 3, 4, 8}) {
    for (int vpp : {1, 2, 3, 4}) {
      if (vpp > 1 && pp == 1) continue;
      for (int groups : {1, 2, 3, 5}) {
        const int M = groups * pp;
        INFO("pp " << pp << " vpp " << vpp << " M " << M);
        // Each rank: every (mb, chunk) forward and backward exactly once, forwards before backwards.
        for (int p = 0; p < pp; ++p) {
          const auto s = pipeline_schedule(pp, vpp, M, p, true);
          REQUIRE(s.size() == static_cast<std::size_t>(2 * M * vpp));
          std::vector<int> seen(2 * M * vpp, 0);
          std::vector<int> fwd_pos(M * vpp, -1);
          for (std::size_t i = 0; i < s.size(); ++i) {
            const int id = s[i].micro_batch * vpp + s[i].chunk;
            ++seen[(s[i].forward ? 0 : M * vpp) + id];
            if (s[i].forward)
              fwd_pos[id] = static_cast<int>(i);
            else
              REQUIRE(fwd_pos[id] >= 0);
          }
          REQUIRE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
          REQUIRE(pipeline_inflight_chunks(pp, vpp, M, p) >= 1);
          REQUIRE(pipeline_inflight_chunks(pp, vpp, M, p) <= M * vpp);
        }
        // Equal chunk costs: work M*vpp*(tf+tb) plus a bubble of (pp-1)(tf+tb) chunk times,
        // i.e. the 1F1B bubble divided by vpp in stage time (Narayanan et al., SC'21, sec. 2.2).
        for (const auto& [tf, tb] : {std::pair{1.0, 1.0}, std::pair{1.0, 2.0}}) {
          const double t = play(pp, vpp, M, tf, tb);
          REQUIRE(t > 0);
          REQUIRE(t == Approx(M * vpp * (tf + tb) + (pp - 1) * (tf + tb)));
        }
        // Inference: forwards only, no deadlock, makespan M*vpp*tf + (pp-1)*tf.
        REQUIRE(play(pp, vpp, M, 1.0, 0.0, false) == Approx(M * vpp + (pp - 1)));
      }
    }
  }
  REQUIRE_THROWS_WITH(pipeline_schedule(4, 2, 6, 0, true), Catch::Contains("not a multiple of pp"));
  REQUIRE_NOTHROW(pipeline_schedule(4, 1, 6, 0, true));
  // vpp = 1 with fewer micro-batches than stages still completes (1F1B degenerates to GPipe).
  REQUIRE(play(4, 1, 2, 1.0, 1.0) == Approx(2 * 2.0 + 3 * 2.0));
  // Peak in-flight activations: 1F1B keeps pp - p micro-batches on rank p; interleaving keeps
  // more chunks, each 1/vpp of the stage.
  REQUIRE(pipeline_inflight_chunks(4, 1, 8, 0) == 4);
  REQUIRE(pipeline_inflight_chunks(4, 1, 8, 3) == 1);
  REQUIRE(pipeline_inflight_chunks(4, 2, 8, 0) == 2 * 3 + 4 + 1);
}
