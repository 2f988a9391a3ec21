#include <catch2/catch.hpp>

#include <set>
#include <string>

#include "engine/simulate.hpp"
#include "engine/step_builder.hpp"

using namespace moesim;
using namespace moesim::engine;
using sim::SimTime;

namespace {

/// 2 MoE layers, 4 experts, top-2, SwiGLU, MHA (heads * head_dim == hidden), untied head.
models::ModelSpec tiny_model() {
  models::ModelSpec m;
  m.name = "tiny";
  m.decoder_layers = 2;
  m.hidden = 512;
  m.heads = 8;
  m.kv_heads = 8;
  m.head_dim = 64;
  m.vocab = 1000;
  m.expert_ffn = 1024;
  m.shared_expert_ffn = 1024;
  m.activation = models::Activation::kSwiGLU;
  m.experts = 4;
  m.top_k = 2;
  m.moe_layer = {true, true};
  return m;
}

Scenario tiny_scenario(WorkloadMode mode) {
  Scenario s;
  s.name = "tiny";
  s.seed = 11;
  s.has_model = true;
  s.model = tiny_model();
  s.routing = models::default_routing(s.model);  // uniform, dropless
  s.parallel.dp = 4;
  s.parallel.ep = 4;
  s.workload.mode = mode;
  if (mode == WorkloadMode::kTrain) {
    s.workload.seq_len = 256;
    s.workload.global_batch = 16;
    s.parallel.micro_batches = 2;
  } else {
    s.workload.batch = 8;
    s.workload.prompt_len = 256;
  }
  return s;
}

GpuRoofline small_gpu() {
  GpuRoofline g;
  g.peak_flops_bf16 = 100e12;
  g.hbm_bytes_per_s = 1e12;
  g.sm_count = 16;
  g.launch_overhead = SimTime::from_ps(1'000'000);
  return g;
}

struct Run {
  SimTime step{};
  SimTime serial_comm{};
};

Run play(BuiltStep& b, double bw = 50e9) {
  sim::Simulation s;
  SimpleCommBackend be(s, b.collectives, bw, SimTime::zero());
  Executor ex(s, b.graph, be, {});
  Run r;
  r.step = ex.run().step_time;
  for (const auto& c : b.collectives) r.serial_comm += be.duration(c);
  return r;
}

}  // namespace

TEST_CASE("roofline: tile and wave quantisation", "[step_builder]") {
  GpuRoofline g = small_gpu();
  g.launch_overhead = SimTime::zero();
  const RooflineCosts c(g);
  // One 128x128 tile with K = 1024: 2*128*128*1024 FLOPs at 0.7 * 100e12 / 16 SMs per SM.
  const double tile = 2.0 * 128 * 128 * 1024;
  REQUIRE(c.dense_gemm(128, 128, 1024) == sim::duration_for(tile * 16, 0.7 * 100e12));
  // 129 rows: two row tiles, still one wave -> same time; 17 tiles: two waves.
  REQUIRE(c.dense_gemm(129, 128, 1024) == c.dense_gemm(128, 128, 1024));
  REQUIRE(c.grouped_gemm(std::vector<std::int64_t>(17, 128), 1024, 128) == sim::duration_for(tile * 32, 0.7 * 100e12));
  // Experts with no rows cost nothing beyond launch.
  REQUIRE(c.grouped_gemm({0, 0}, 1024, 128) == SimTime::zero());
}

TEST_CASE("tiny prefill: op counts, closed-form FLOPs, conserved bytes", "[step_builder]") {
  Scenario s = tiny_scenario(WorkloadMode::kPrefill);
  s.routing.block_size = 1;  // no dropless block padding: executed FLOPs = model FLOPs
  const RooflineCosts costs(small_gpu());
  BuiltStep b = build_step(s, costs, {});
  // Per GPU: embed + 2 x (norm, qkv, rope, attn, o_proj, norm, router, permute, fc1, expert_act,
  // fc2, unpermute) + lm_head.
  REQUIRE(b.compute_ops_per_gpu == std::vector<std::uint32_t>(4, 26));
  REQUIRE(b.kernels.at("norm").count == 4 * 2 * 2);
  REQUIRE(b.kernels.at("expert_act").count == 4 * 2);
  REQUIRE(b.collective_ops == 4);  // dispatch + combine per layer
  REQUIRE(b.kernels.at("expert_fc1").count == 8);

  // Closed form. N tokens, per token per layer: 2 * (4 h^2 + h E + k * 3 h F); attention per
  // sequence 2 * (P(P+1)/2) * heads * 2 * head_dim; LM head on the last token of each sequence.
  const double N = 8 * 256, h = 512, E = 4, k = 2, F = 1024, P = 256, seqs = 8, V = 1000;
  const double per_token = 2 * (4 * h * h + h * E + k * 3 * h * F);
  const double attn = seqs * 2 * (P * (P + 1) / 2) * 8 * 2 * 64;
  const double expected = 2 * (N * per_token + attn) + 2 * seqs * h * V;
  REQUIRE(b.flops.model == Approx(expected).epsilon(1e-12));
  REQUIRE(b.flops.executed == Approx(expected).epsilon(1e-12));  // dropless: no padding

  // Bytes: every dispatch (and combine) moves kept rows * hidden * 2 bytes, nothing lost.
  REQUIRE(b.dropped == 0);
  REQUIRE(b.kept == static_cast<std::int64_t>(2 * N * k));
  double disp = 0, comb = 0;
  for (const auto& c : b.collectives) {
    REQUIRE(c.kind == CollectiveKind::kAllToAllV);
    REQUIRE(c.gpus == std::vector<int>{0, 1, 2, 3});
    (c.category == Category::kDispatch ? disp : comb) += c.total_bytes();
  }
  REQUIRE(disp == 2 * N * k * h * 2);
  REQUIRE(comb == disp);

  const Run r = play(b);
  REQUIRE(r.step > SimTime::zero());
  REQUIRE(r.step <= b.serial_compute + r.serial_comm);
  REQUIRE(b.memory.fits);
  REQUIRE(b.memory.stages.at(0).kv_cache == Approx(2.0 * 256 * 2 * (2 * 8 * 64 * 2)));
}

TEST_CASE("build is deterministic", "[step_builder]") {
  const Scenario s = tiny_scenario(WorkloadMode::kTrain);
  const RooflineCosts costs(small_gpu());
  BuiltStep a = build_step(s, costs, {}), b = build_step(s, costs, {});
  REQUIRE(a.flops.executed == b.flops.executed);
  REQUIRE(play(a).step == play(b).step);
}

TEST_CASE("dropless block padding is executed: more padding, more expert FLOPs and a longer step", "[step_builder]") {
  // Issue 17: block 1, 128, 1024 used to give the same step time. Each local expert's rows
  // (gathered from all sources) are now padded to the block before the grouped GEMM.
  Scenario s = tiny_scenario(WorkloadMode::kPrefill);
  s.routing.distribution = models::Distribution::kPowerLaw;  // uneven rows: not block multiples
  s.routing.alpha = 1.2;
  const RooflineCosts costs(small_gpu());
  std::vector<BuiltStep> b;
  std::vector<Run> r;
  for (std::int64_t block : {1, 128, 1024}) {
    s.routing.block_size = block;
    b.push_back(build_step(s, costs, {}));
    r.push_back(play(b.back()));
  }
  // Same useful work; executed FLOPs = model + padding, growing with the block.
  REQUIRE(b[1].flops.model == Approx(b[0].flops.model));
  REQUIRE(b[2].flops.model == Approx(b[0].flops.model));
  REQUIRE(b[0].flops.executed == Approx(b[0].flops.model));  // block 1: nothing padded
  REQUIRE(b[1].flops.executed > b[0].flops.executed);
  REQUIRE(b[2].flops.executed > b[1].flops.executed);
  // The roofline's GEMM tile is 128 rows, so padding to 128 is already inside its tile
  // quantisation (no slower, as on a real GPU); padding to 1024 adds whole tiles.
  REQUIRE(b[1].kernels.at("expert_fc1").time >= b[0].kernels.at("expert_fc1").time);
  REQUIRE(b[2].kernels.at("expert_fc1").time > b[1].kernels.at("expert_fc1").time);
  REQUIRE(r[1].step >= r[0].step);
  REQUIRE(r[2].step > r[1].step);
  // Rows fed to the GEMMs are block multiples per expert: 4 experts x >= 1 block per micro-batch.
  REQUIRE(b[2].moe_layers.at(0).rows_fed_fwd % 1024 == 0);
}

TEST_CASE("MLA model FLOPs do not depend on TP; the replicated down-projections are executed", "[step_builder]") {
  // Issue 17: DeepSeek-V3's model FLOPs grew with TP (+2.2% at TP2, +6.6% at TP4) because the
  // q_a / kv_a down-projections, which every TP rank computes in full, were counted per rank.
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.model.attention = models::AttentionKind::kMla;
  s.model.mla.q_lora_rank = 256;
  s.model.mla.kv_lora_rank = 128;
  s.model.mla.qk_nope_head_dim = 64;
  s.model.mla.qk_rope_head_dim = 32;
  s.model.mla.v_head_dim = 64;
  s.routing.block_size = 1;
  const RooflineCosts costs(small_gpu());
  s.parallel.dp = 4;
  s.parallel.tp = 1;
  const BuiltStep tp1 = build_step(s, costs, {});
  s.parallel.dp = 1;
  s.parallel.tp = 4;
  s.parallel.ep = 4;
  const BuiltStep tp4 = build_step(s, costs, {});
  REQUIRE(tp4.flops.model == Approx(tp1.flops.model).epsilon(1e-12));
  // Executed FLOPs do grow: each of the 4 TP ranks runs the down-projections in full
  // (forward, dgrad and wgrad: 3x): 3 extra copies of 2*T*h*(q_lora + kv_lora + rope) per layer.
  const double T = 16 * 256, h = 512;
  const double extra = 3.0 * 3 * 2 * T * h * (256 + 128 + 32) * 2;  // 3 extra ranks, 3 passes, 2 layers
  REQUIRE(tp4.flops.executed - tp1.flops.executed == Approx(extra).epsilon(1e-9));
}

TEST_CASE("skewed routing is slower than balanced", "[step_builder]") {
  Scenario s = tiny_scenario(WorkloadMode::kPrefill);
  const RooflineCosts costs(small_gpu());
  s.routing.distribution = models::Distribution::kBalanced;
  BuiltStep bal = build_step(s, costs, {});
  s.routing.distribution = models::Distribution::kPowerLaw;
  s.routing.alpha = 1.2;
  BuiltStep skew = build_step(s, costs, {});
  REQUIRE(bal.flops.model == Approx(skew.flops.model));  // same work, different spread
  REQUIRE(skew.moe_layers.at(0).rank_max_over_mean > bal.moe_layers.at(0).rank_max_over_mean);
  REQUIRE(play(skew).step > play(bal).step);
}

TEST_CASE("larger capacity factor: fewer drops, more padding, longer expert GEMM", "[step_builder]") {
  Scenario s = tiny_scenario(WorkloadMode::kPrefill);
  const RooflineCosts costs(small_gpu());
  s.routing.distribution = models::Distribution::kPowerLaw;
  s.routing.alpha = 1.2;
  s.routing.pad_to_capacity = true;
  s.routing.capacity_factor = 1.0;
  BuiltStep lo = build_step(s, costs, {});
  s.routing.capacity_factor = 2.0;
  BuiltStep hi = build_step(s, costs, {});
  REQUIRE(lo.dropped > 0);
  REQUIRE(hi.drop_fraction() < lo.drop_fraction());
  REQUIRE(hi.padded > lo.padded);
  REQUIRE(hi.padded_fraction() > lo.padded_fraction());
  REQUIRE(hi.kernels.at("expert_fc1").time > lo.kernels.at("expert_fc1").time);
  // Padded rows are executed but not useful.
  REQUIRE(hi.flops.executed > hi.flops.model);
  // Fixed-shape buffers: dispatch bytes are C rows per (source, expert).
  const std::int64_t C = models::expert_capacity(512, 2, 4, 2.0);
  REQUIRE(hi.collectives.at(0).total_bytes() == static_cast<double>(4 * 4 * C * 512 * 2));
}

TEST_CASE("overlap chunks never slow a communication-bound layer down", "[step_builder]") {
  Scenario s = tiny_scenario(WorkloadMode::kPrefill);
  const RooflineCosts costs(small_gpu());
  StepBuildOptions o1, o2, o4;
  o2.overlap_chunks = 2;
  o4.overlap_chunks = 4;
  BuiltStep b1 = build_step(s, costs, o1), b2 = build_step(s, costs, o2), b4 = build_step(s, costs, o4);
  REQUIRE(b2.collective_ops == 2 * b1.collective_ops);
  REQUIRE(b2.flops.executed == Approx(b1.flops.executed));
  const double bw = 5e9;  // slow links: the all-to-alls dominate
  const Run r1 = play(b1, bw), r2 = play(b2, bw), r4 = play(b4, bw);
  REQUIRE(r2.step <= r1.step);
  REQUIRE(r4.step <= r2.step);
  REQUIRE(r1.step <= b1.serial_compute + r1.serial_comm);
  REQUIRE(r2.step <= b2.serial_compute + r2.serial_comm);
}

TEST_CASE("training step: backward for every forward op, DP reduction, optimizer", "[step_builder]") {
  const RooflineCosts costs(small_gpu());
  const auto check = [&](const Scenario& s) {
    BuiltStep b = build_step(s, costs, {});
    for (const auto& [name, k] : b.kernels) {
      if (name.find('.') != std::string::npos || name == "optimizer") continue;
      bool has_bwd = false;
      for (const auto& [other, k2] : b.kernels) has_bwd |= other.rfind(name + ".", 0) == 0;
      INFO(name);
      REQUIRE(has_bwd);
    }
    int reduces = 0;
    for (const auto& c : b.collectives) reduces += c.kind == CollectiveKind::kReduceScatter && c.backward ? 1 : 0;
    REQUIRE(reduces > 0);
    REQUIRE(b.kernels.at("optimizer").count == static_cast<std::uint64_t>(s.parallel.world()));
    // Training model FLOPs are 3x the forward ones.
    Scenario fwd = s;
    fwd.workload.recompute = false;
    const Run r = play(b);
    REQUIRE(r.step > SimTime::zero());
    REQUIRE(r.step <= b.serial_compute + r.serial_comm);
    return b;
  };
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  BuiltStep plain = check(s);
  s.workload.recompute = true;
  BuiltStep rec = check(s);
  REQUIRE(rec.flops.model == Approx(plain.flops.model));
  REQUIRE(rec.flops.executed > plain.flops.executed);
  REQUIRE(rec.memory.stages[0].activations < plain.memory.stages[0].activations);
  // Pipeline: 2 stages x dp 2, EP 2, with send/recv between stages.
  s.workload.recompute = false;
  s.parallel.dp = 2;
  s.parallel.pp = 2;
  s.parallel.ep = 2;
  s.parallel.micro_batches = 4;
  BuiltStep pp = check(s);
  int p2p = 0;
  for (const auto& c : pp.collectives) p2p += c.kind == CollectiveKind::kSendRecv ? 1 : 0;
  REQUIRE(p2p == 2 * 2 * 4);  // (fwd + bwd) x dp x micro-batches
  REQUIRE(pp.flops.model == Approx(plain.flops.model));
}

TEST_CASE("interleaved pipeline: pp x vpp chunks, more transfers, a smaller bubble", "[step_builder][pipeline]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.model.decoder_layers = 8;
  s.model.moe_layer.assign(8, true);
  s.parallel.dp = 2;
  s.parallel.pp = 2;
  s.parallel.ep = 2;
  s.parallel.micro_batches = 4;
  const auto p2p_of = [](const BuiltStep& b) {
    int n = 0;
    for (const auto& c : b.collectives) n += c.kind == CollectiveKind::kSendRecv ? 1 : 0;
    return n;
  };
  BuiltStep plain = build_step(s, costs, {});
  s.parallel.vpp = 2;
  BuiltStep inter = build_step(s, costs, {});
  s.parallel.vpp = 4;
  BuiltStep inter4 = build_step(s, costs, {});
  // Transfers: 2 (pp * vpp - 1) per micro-batch and dp index (forward activations + backward grads).
  REQUIRE(p2p_of(plain) == 2 * (2 - 1) * 4 * 2);
  REQUIRE(p2p_of(inter) == 2 * (4 - 1) * 4 * 2);
  REQUIRE(p2p_of(inter4) == 2 * (8 - 1) * 4 * 2);
  // Same work, same op count per GPU: interleaving only reorders and re-cuts the layers.
  REQUIRE(inter.flops.model == Approx(plain.flops.model));
  REQUIRE(inter.flops.executed == Approx(plain.flops.executed));
  REQUIRE(inter.serial_compute == plain.serial_compute);
  // A fast network: the smaller bubble wins over the extra transfers.
  const SimTime t1 = play(plain, 1e15).step, t2 = play(inter, 1e15).step, t4 = play(inter4, 1e15).step;
  REQUIRE(t2 < t1);
  REQUIRE(t4 < t2);
  // Interleaving keeps more micro-batch chunks in flight on the first rank.
  REQUIRE(inter.memory.stages.at(0).activations > plain.memory.stages.at(0).activations);
  // An explicit layout moves layers: six of eight on the first rank is the same work, slower.
  s.parallel.vpp = 2;
  s.parallel.stage_layers = {3, 1, 3, 1};
  BuiltStep uneven = build_step(s, costs, {});
  REQUIRE(uneven.flops.model == Approx(plain.flops.model));
  REQUIRE(p2p_of(uneven) == p2p_of(inter));
  REQUIRE(play(uneven, 1e15).step > t2);  // rank 0 holds 6 layers and sets the pace
}

TEST_CASE("selective recomputation re-runs exactly the listed modules and keeps less", "[step_builder]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.model.shared_experts = 1;
  BuiltStep plain = build_step(s, costs, {});
  const auto with = [&](std::initializer_list<RecomputeModule> mods) {
    Scenario r = s;
    for (RecomputeModule m : mods) r.workload.recompute_modules |= 1U << static_cast<unsigned>(m);
    return build_step(r, costs, {});
  };
  const std::uint64_t per = 4 * 2 * 2;  // GPUs x layers x micro-batches
  BuiltStep attn = with({RecomputeModule::kCoreAttn});
  REQUIRE(attn.kernels.at("attn").count == plain.kernels.at("attn").count + per);
  REQUIRE(attn.kernels.at("qkv").count == plain.kernels.at("qkv").count);
  REQUIRE(attn.flops.model == Approx(plain.flops.model));
  REQUIRE(attn.flops.executed > plain.flops.executed);
  REQUIRE(attn.memory.stages[0].activations < plain.memory.stages[0].activations);

  BuiltStep ln = with({RecomputeModule::kLayernorm});
  REQUIRE(ln.kernels.at("norm").count == plain.kernels.at("norm").count + 2 * per);
  REQUIRE(ln.flops.executed == Approx(plain.flops.executed));  // norms do no GEMM FLOPs
  REQUIRE(ln.memory.stages[0].activations < plain.memory.stages[0].activations);

  BuiltStep act = with({RecomputeModule::kMoeAct});
  REQUIRE(act.kernels.at("expert_act").count > plain.kernels.at("expert_act").count);
  REQUIRE(act.kernels.at("expert_fc1").count == plain.kernels.at("expert_fc1").count);
  REQUIRE(act.memory.stages[0].activations < plain.memory.stages[0].activations);

  BuiltStep sh = with({RecomputeModule::kSharedExperts});
  REQUIRE(sh.kernels.at("shared_fc1").count == plain.kernels.at("shared_fc1").count + per);
  REQUIRE(sh.memory.stages[0].activations < plain.memory.stages[0].activations);

  // moe: the whole block again, its all-to-alls included.
  BuiltStep moe = with({RecomputeModule::kMoe});
  REQUIRE(moe.kernels.at("expert_fc1").count > plain.kernels.at("expert_fc1").count);
  REQUIRE(moe.collectives.size() > plain.collectives.size());
  REQUIRE(moe.memory.stages[0].activations < act.memory.stages[0].activations);

  // Everything selective still stashes more per layer than full recomputation, which keeps
  // only each layer's input (plus one layer's working set while it re-runs, so compare on a
  // model deep enough for the stash to dominate).
  Scenario deep = s;
  deep.model.decoder_layers = 16;
  deep.model.moe_layer.assign(16, true);
  Scenario all_s = deep;
  for (RecomputeModule m : {RecomputeModule::kCoreAttn, RecomputeModule::kLayernorm, RecomputeModule::kMoe,
                            RecomputeModule::kSharedExperts})
    all_s.workload.recompute_modules |= 1U << static_cast<unsigned>(m);
  Scenario full_s = deep;
  full_s.workload.recompute = true;
  const double deep_plain = build_step(deep, costs, {}).memory.stages[0].activations;
  const double all = build_step(all_s, costs, {}).memory.stages[0].activations;
  const double full = build_step(full_s, costs, {}).memory.stages[0].activations;
  REQUIRE(all > full);
  REQUIRE(all < deep_plain);
}

TEST_CASE("precision-aware optimizer: bf16 moments and main grads shrink state, grads and DP traffic",
          "[step_builder][memory]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  const auto build = [&](const Scenario& x) { return build_step(x, costs, simulate_options(x).build); };
  const auto dp_bytes = [](const BuiltStep& b) {
    double t = 0;
    for (const auto& c : b.collectives)
      if (c.category == Category::kDataParallel && c.kind == CollectiveKind::kReduceScatter) t += c.total_bytes();
    return t;
  };
  const BuiltStep plain = build(s);
  Scenario p = s;
  p.workload.optimizer.exp_avg_bytes = p.workload.optimizer.exp_avg_sq_bytes = 2;
  p.workload.optimizer.main_grads_bytes = 2;
  const BuiltStep pa = build(p);
  const auto& a = plain.memory.stages[0];
  const auto& b = pa.memory.stages[0];
  REQUIRE(b.optimizer == Approx(a.optimizer * 8.0 / 12.0));
  REQUIRE(b.grads == Approx(a.grads / 2));
  REQUIRE(b.weights == a.weights);
  REQUIRE(dp_bytes(plain) > 0);
  REQUIRE(dp_bytes(pa) == Approx(dp_bytes(plain) / 2));
  // Without the distributed optimizer every rank keeps the whole state: dp times more.
  Scenario nd = s;
  nd.workload.optimizer.zero_stage = 0;
  REQUIRE(build(nd).memory.stages[0].optimizer > a.optimizer);
}

TEST_CASE("ZeRO stages: DP traffic per stage follows each stage's closed form", "[step_builder][zero]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.parallel.dp = 8;  // expert-DP group of 2 (dp * tp / ep), so expert params shard too
  s.parallel.micro_batches = 2;
  const int M = s.parallel.micro_batches;
  struct Traffic {
    double ar = 0, rs = 0, ag = 0;
  };
  const auto traffic = [&](int stage, ParamGather g, GradSync gs = GradSync::kPerMicroBatch) {
    Scenario x = s;
    x.workload.optimizer.zero_stage = stage;
    x.workload.optimizer.param_gather = g;
    x.workload.optimizer.grad_sync = gs;
    const BuiltStep b = build_step(x, costs, simulate_options(x).build);
    Traffic t;
    for (const auto& c : b.collectives) {
      if (c.category != Category::kDataParallel) continue;
      if (c.kind == CollectiveKind::kAllReduce) t.ar += c.total_bytes();
      if (c.kind == CollectiveKind::kReduceScatter) t.rs += c.total_bytes();
      if (c.kind == CollectiveKind::kAllGather) t.ag += c.total_bytes();
    }
    return t;
  };
  const Traffic z0 = traffic(0, ParamGather::kPerUse), z1 = traffic(1, ParamGather::kPerUse),
                z2 = traffic(2, ParamGather::kPerUse), z3 = traffic(3, ParamGather::kPerUse),
                z3s = traffic(3, ParamGather::kPerStep, GradSync::kPerStep),
                z3m = traffic(3, ParamGather::kPerMicroBatch, GradSync::kPerStep),
                z2s = traffic(2, ParamGather::kPerUse, GradSync::kPerStep);
  // ZeRO-0: one all-reduce of every grad, nothing else.
  REQUIRE(z0.ar > 0);
  REQUIRE(z0.rs == 0);
  REQUIRE(z0.ag == 0);
  // ZeRO-1: the same grads reduce-scattered once, params (bf16: half the fp32 grad bytes) gathered once.
  REQUIRE(z1.ar == 0);
  REQUIRE(z1.rs == Approx(z0.ar));
  REQUIRE(z1.ag == Approx(z1.rs / 2));
  // ZeRO-2: grads reduce-scattered in each micro-batch's backward.
  REQUIRE(z2.rs == Approx(M * z1.rs));
  REQUIRE(z2.ag == Approx(z1.ag));
  // ZeRO-3 per layer: every unit gathered before each forward and each backward of each micro-batch.
  REQUIRE(z3.rs == Approx(M * z1.rs));
  REQUIRE(z3.ag == Approx(2 * M * z1.ag));
  // ZeRO-3 per step (FSDP2 under pipelining): once each way.
  REQUIRE(z3s.rs == Approx(z1.rs));
  REQUIRE(z3s.ag == Approx(z1.ag));
  // Kept from each forward to its backward (reshard_after_forward: false), grads synced once.
  REQUIRE(z3m.ag == Approx(M * z1.ag));
  REQUIRE(z3m.rs == Approx(z1.rs));
  // ZeRO-2 with grads accumulated unsharded: ZeRO-1's traffic.
  REQUIRE(z2s.rs == Approx(z1.rs));
  REQUIRE(z2s.ag == Approx(z1.ag));
}

TEST_CASE("ZeRO stages: memory of weights, grads and optimizer per stage", "[step_builder][zero][memory]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.parallel.dp = 8;
  s.model.decoder_layers = 8;  // deep enough that two unsharded units are less than the model
  s.model.moe_layer.assign(8, true);
  const auto mem = [&](int stage, ParamGather g, GradSync gs = GradSync::kPerMicroBatch) {
    Scenario x = s;
    x.workload.optimizer.zero_stage = stage;
    x.workload.optimizer.param_gather = g;
    x.workload.optimizer.grad_sync = gs;
    return build_step(x, costs, simulate_options(x).build).memory.stages[0];
  };
  // Local params before sharding, and what one rank keeps after: dense over dp = 8, experts over
  // the expert-DP group of dp / ep = 2; the largest unit is one layer or the embedding table.
  const models::ModelSpec& m = s.model;
  double dense = 0, expert = 0, unit = 0;
  for (int l = 0; l < m.num_layers(); ++l) {
    const LayerParams p = layer_params(m, l);
    dense += static_cast<double>(p.dense_local(1));
    expert += static_cast<double>(p.per_expert) * p.experts / 4;
    unit = std::max(unit, static_cast<double>(p.dense_local(1)) + static_cast<double>(p.per_expert) * p.experts / 4);
  }
  const double table = static_cast<double>(m.vocab * m.hidden);
  dense += table * (m.tied_embeddings ? 1 : 2) + static_cast<double>(m.hidden);  // tables, final norm
  unit = std::max(unit, table);
  const double full = dense + expert, sharded = dense / 8 + expert / 2;
  const double bpp = m.bytes_per_param;
  const auto z0 = mem(0, ParamGather::kPerUse), z1 = mem(1, ParamGather::kPerUse), z2 = mem(2, ParamGather::kPerUse),
             z3 = mem(3, ParamGather::kPerUse), z3s = mem(3, ParamGather::kPerStep, GradSync::kPerStep),
             z3m = mem(3, ParamGather::kPerMicroBatch);
  REQUIRE(z0.optimizer == Approx(12 * full));
  REQUIRE(z1.optimizer == Approx(12 * sharded));
  REQUIRE(z0.grads == Approx(4 * full));
  REQUIRE(z1.grads == Approx(4 * full));
  REQUIRE(z2.grads == Approx(4 * (sharded + unit)));
  REQUIRE(z2.weights == Approx(bpp * full));
  REQUIRE(z3.weights == Approx(bpp * (sharded + 2 * unit)));
  REQUIRE(z3.grads == Approx(4 * (sharded + unit)));
  REQUIRE(z3s.weights == Approx(bpp * (full + sharded)));
  REQUIRE(z3s.grads == Approx(4 * full));
  REQUIRE(z3m.weights == Approx(z3s.weights));
  REQUIRE(z3m.grads == Approx(z3.grads));
  for (const auto& z : {z1, z2, z3, z3s}) REQUIRE(z.optimizer == Approx(z1.optimizer));
  REQUIRE(z3.total() < z2.total());
  REQUIRE(z2.total() < z1.total());
  REQUIRE(z1.total() < z0.total());
  // A shard group of one rank (dp = ep: each expert on one GPU of the stage) holds its params
  // once, whole: nothing gathered, no second copy, only the dense units counted as in flight.
  s.parallel.dp = 4;
  double unit_dense = table;
  for (int l = 0; l < m.num_layers(); ++l)
    unit_dense = std::max(unit_dense, static_cast<double>(layer_params(m, l).dense_local(1)));
  const auto e1 = mem(3, ParamGather::kPerUse), e1s = mem(3, ParamGather::kPerStep, GradSync::kPerStep);
  REQUIRE(e1.weights == Approx(bpp * (dense / 4 + expert + 2 * unit_dense)));
  REQUIRE(e1.grads == Approx(4 * (dense / 4 + expert + unit_dense)));
  REQUIRE(e1s.weights == Approx(bpp * (full + dense / 4)));
}

TEST_CASE("ZeRO-3: each unit's first kernel waits for its parameter gather", "[step_builder][zero]") {
  const RooflineCosts costs(small_gpu());
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  s.parallel.dp = 8;
  StepBuildOptions o = simulate_options(s).build;
  o.host_op_cost = SimTime::zero();  // the network alone (every gather is also an op to issue)
  s.workload.optimizer.zero_stage = 1;
  BuiltStep z1 = build_step(s, costs, o);
  s.workload.optimizer.zero_stage = 3;
  o.zero_stage = 3;
  BuiltStep z3 = build_step(s, costs, o);
  // A slow DP network: ZeRO-1's gather is one collective after the optimizer; ZeRO-3 waits for a
  // gather before every unit of every forward and backward, so it is slower by at least the
  // gathers that cannot hide (the first unit's, before anything has run).
  const Run a = play(z1, 1e9), b = play(z3, 1e9);
  REQUIRE(b.step > a.step);
  // With a fast network the gathers hide behind compute (one unit prefetched): the difference
  // shrinks to well under the slow network's.
  const Run fa = play(z1, 1e13), fb = play(z3, 1e13);
  REQUIRE((fb.step - fa.step).ps() < (b.step - a.step).ps() / 10);
}

TEST_CASE("context parallelism: each rank computes 1/cp of a causal sequence's attention pairs", "[step_builder][cp]") {
  AttentionShape full;
  full.q_len = full.kv_len = 4096;
  full.causal = true;
  for (int cp : {2, 4, 8}) {
    AttentionShape shard = full;
    shard.q_len = full.kv_len / cp;
    shard.context_shards = cp;
    REQUIRE(attention_pairs(shard) * cp == Approx(attention_pairs(full)));
  }
}

TEST_CASE("context parallelism: ring traffic, FLOPs and memory per rank", "[step_builder][cp]") {
  const RooflineCosts costs(small_gpu());
  // dp 4 x cp 1 and dp 2 x cp 2 on the same 4 GPUs: every rank holds 512 tokens per micro-batch
  // (2 whole sequences of 256, or half of 4) and the same attention pairs, so FLOPs and memory
  // agree; only cp = 2 exchanges K/V.
  Scenario a = tiny_scenario(WorkloadMode::kTrain);
  Scenario b = a;
  b.parallel.dp = 2;
  b.parallel.cp = 2;
  StepBuildOptions o = simulate_options(a).build;
  o.host_op_cost = SimTime::zero();
  BuiltStep ba = build_step(a, costs, o), bb = build_step(b, costs, o);
  REQUIRE(bb.flops.model == Approx(ba.flops.model));
  REQUIRE(bb.flops.executed == Approx(ba.flops.executed));
  REQUIRE(bb.memory.stages[0].activations == Approx(ba.memory.stages[0].activations));
  const auto ring = [](const BuiltStep& s) {
    double bytes = 0;
    int n = 0;
    for (const auto& c : s.collectives)
      if (c.kind == CollectiveKind::kSendRecv && c.category == Category::kOtherComm) {
        bytes += c.total_bytes();
        ++n;
      }
    return std::pair{n, bytes};
  };
  REQUIRE(ring(ba).first == 0);
  // Per layer and micro-batch, per CP group (2 of them: dp 2 x tp 1): forward cp(cp-1) = 2
  // transfers of one K/V chunk; backward cp*cp = 4, of which cp(cp-1) carry K/V and their
  // gradients (2 chunks) and cp return dK/dV (1 chunk).
  const models::ModelSpec& m = a.model;
  const double chunk = 512.0 * 2 * m.kv_heads * m.head_dim * 2;  // tokens x (K, V) x heads x dim x bf16
  const int L = m.num_layers(), M = a.parallel.micro_batches, groups = 2;
  REQUIRE(ring(bb).first == L * M * groups * (2 + 4));
  REQUIRE(ring(bb).second == Approx(L * M * groups * chunk * (2 * 1 + (2 * 2 + 2 * 1))));
  // The exchange overlaps the other chunk's compute: on a fast network cp = 2 costs about what
  // cp = 1 does, on a slow one it is exposed.
  const Run fa = play(ba, 1e13), fb = play(bb, 1e13);
  const Run sa = play(ba, 1e9), sb = play(bb, 1e9);
  REQUIRE(sb.step > sa.step);
  REQUIRE((fb.step.ps() - fa.step.ps()) * 10 < (sb.step.ps() - sa.step.ps()));
  // Activations shrink with cp at a fixed sequence: dp 2 x cp 1 on 2 GPUs holds twice the tokens.
  Scenario c = a;
  c.parallel.dp = 2;
  c.parallel.ep = 2;
  Scenario d = b;
  d.parallel.ep = 2;
  REQUIRE(build_step(d, costs, o).memory.stages[0].activations ==
          Approx(build_step(c, costs, o).memory.stages[0].activations / 2));
}

TEST_CASE("FP8 training: GEMM inputs quantised per use, weights once per step", "[step_builder][fp8]") {
  const RooflineCosts costs(small_gpu());  // same GEMM time for both dtypes: only the casts differ
  Scenario s = tiny_scenario(WorkloadMode::kTrain);
  StepBuildOptions o = simulate_options(s).build;
  const BuiltStep bf = build_step(s, costs, o);
  s.execution.weights_dtype = "fp8";
  const BuiltStep f8 = build_step(s, costs, o);
  REQUIRE(bf.kernels.count("fp8_weight_cast") == 0);
  REQUIRE(f8.kernels.count("fp8_weight_cast") == 1);
  // One weight cast per GPU: reads bf16, writes row- and column-wise FP8 of every local param.
  const auto& wc = f8.kernels.at("fp8_weight_cast");
  REQUIRE(wc.count == static_cast<std::uint64_t>(s.parallel.world()));
  // Every linear GEMM forward and dgrad got slower by its input's cast; wgrad did not.
  for (const char* k : {"qkv", "o_proj", "expert_fc1", "expert_fc2", "o_proj.dgrad", "expert_fc1.dgrad"})
    REQUIRE(f8.kernels.at(k).time > bf.kernels.at(k).time);
  for (const char* k : {"o_proj.wgrad", "expert_fc1.wgrad", "qkv.wgrad", "attn", "lm_head"})
    REQUIRE(f8.kernels.at(k).time == bf.kernels.at(k).time);
  // o_proj's input is T x (heads x head_dim) per GPU, per micro-batch: exactly that cast extra.
  const std::int64_t T = s.workload.seq_len * s.workload.global_batch / s.parallel.dp / s.parallel.micro_batches;
  const double elems = static_cast<double>(T) * s.model.heads * s.model.head_dim;
  const auto n = static_cast<std::int64_t>(f8.kernels.at("o_proj").count);
  REQUIRE((f8.kernels.at("o_proj").time - bf.kernels.at("o_proj").time).ps() ==
          n * costs.elementwise(4.0 * elems).ps());
  // Inference (W8A8): one row-wise cast per GEMM input, 3 bytes per element, no weight cast.
  Scenario p = tiny_scenario(WorkloadMode::kPrefill);
  const BuiltStep pb = build_step(p, costs, o);
  p.execution.weights_dtype = "fp8";
  const BuiltStep pf = build_step(p, costs, o);
  REQUIRE(pf.kernels.count("fp8_weight_cast") == 0);
  const double pelems =
      static_cast<double>(p.workload.batch / p.parallel.dp * p.workload.prompt_len) * p.model.heads * p.model.head_dim;
  const auto pn = static_cast<std::int64_t>(pf.kernels.at("o_proj").count);
  REQUIRE((pf.kernels.at("o_proj").time - pb.kernels.at("o_proj").time).ps() ==
          pn * costs.elementwise(3.0 * pelems).ps());
}

TEST_CASE("two-batch overlap: the same work in two halves, each half's all-to-alls behind the other's compute",
          "[step_builder][tbo]") {
  const RooflineCosts costs(small_gpu());
  for (WorkloadMode mode : {WorkloadMode::kPrefill, WorkloadMode::kDecode}) {
    Scenario s = tiny_scenario(WorkloadMode::kPrefill);
    if (mode == WorkloadMode::kDecode) {
      s.workload.mode = WorkloadMode::kDecode;
      s.workload.context_len = 1024;
    }
    StepBuildOptions o = simulate_options(s).build;
    o.host_op_cost = SimTime::zero();
    BuiltStep plain = build_step(s, costs, o);
    s.execution.two_batch_overlap = true;
    BuiltStep tbo = build_step(s, costs, o);
    // Conservation: FLOPs, expert rows and all-to-all bytes are those of the whole batch.
    REQUIRE(tbo.flops.model == Approx(plain.flops.model));
    REQUIRE(tbo.flops.executed == Approx(plain.flops.executed));
    std::int64_t rows_plain = 0, rows_tbo = 0;
    for (const auto& l : plain.moe_layers) rows_plain += l.rows_fed_fwd;
    for (const auto& l : tbo.moe_layers) rows_tbo += l.rows_fed_fwd;
    REQUIRE(rows_tbo == rows_plain);
    const auto a2a_bytes = [](const BuiltStep& b) {
      double t = 0;
      for (const auto& c : b.collectives)
        if (c.kind == CollectiveKind::kAllToAllV) t += c.total_bytes();
      return t;
    };
    REQUIRE(a2a_bytes(tbo) == Approx(a2a_bytes(plain)));
    REQUIRE(tbo.kernels.at("expert_fc1").count == 2 * plain.kernels.at("expert_fc1").count);
    // A network slow enough that the all-to-alls matter: the plain step waits for every
    // dispatch and combine; TBO hides them behind the other half's attention and experts. (In
    // decode each half re-reads the weights, so with a fast network TBO is slower: 98 -> 162 us
    // here, which is why runtimes enable it for large batches.)
    const double bw = mode == WorkloadMode::kDecode ? 1e8 : 2e9;
    const Run p = play(plain, bw), t = play(tbo, bw);
    REQUIRE(t.step < p.step);
    if (mode == WorkloadMode::kDecode) REQUIRE(play(tbo, 1e14).step > play(plain, 1e14).step);
  }
}
