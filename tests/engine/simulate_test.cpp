#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "config/reader.hpp"
#include "engine/dispatch_run.hpp"
#include "engine/simulate.hpp"
#include "hardware/flow_network.hpp"
#include "hardware/topology.hpp"

using namespace moesim;
using namespace moesim::engine;
using namespace moesim::sim::literals;
using sim::SimTime;

namespace {

hw::ClusterSpec one_node() {
  hw::ClusterSpec s;
  s.gpu.name = "test-gpu";
  s.gpu.pcie_bandwidth = 64e9;
  s.nodes = 1;
  s.gpus_per_node = 8;
  s.intra.fabric = hw::IntraFabric::kNvswitch;
  s.intra.bandwidth = 400e9;
  s.intra.latency = 1_us;
  return s;
}

OpInfo info(const char* n, Category c) {
  OpInfo i;
  i.name = n;
  i.category = c;
  return i;
}

/// GPU 0 sends `bytes` to GPU 1 twice: a pipeline send/recv on the PP stream and a one-way
/// all-to-allv on the EP stream, both ready at t = 0 (or only one of them).
SimTime play_pair(bool send, bool a2a, double bytes) {
  const hw::Topology topo = hw::build_topology(one_node());
  sim::Simulation s;
  hw::FlowNetwork net(s);
  topo.install(net);
  std::vector<CollectiveRequest> reqs(2);
  reqs[0].kind = CollectiveKind::kSendRecv;
  reqs[0].gpus = {0, 1};
  reqs[0].bytes = bytes;
  reqs[1].kind = CollectiveKind::kAllToAllV;
  reqs[1].gpus = {0, 1};
  reqs[1].matrix = std::make_shared<const std::vector<double>>(std::vector<double>{0, bytes, 0, 0});
  NetworkCommBackend be(s, topo, &net, reqs, {});
  StepGraph g(8);
  if (send) g.collective({0, 1}, info("pp_send_act", Category::kPipeline), 0, Stream::kPpComm);
  if (a2a) g.collective({0, 1}, info("dispatch", Category::kDispatch), 1, Stream::kEpComm);
  Executor ex(s, g, be, {});
  const SimTime t = ex.run().step_time;
  for (std::size_t i = 0; i < reqs.size(); ++i) REQUIRE(be.sent()[i] == be.received()[i]);
  return t;
}

Scenario small_train(const std::string& extra = "",
                     const std::string& parallel = "parallel: { dp: 4, tp: 1, ep: 4, pp: 2, micro_batches: 4 }\n") {
  const std::string yaml = R"(name: small
model: mixtral-8x7b
cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 4
  intra_node: { fabric: nvswitch, bandwidth: 450GB/s, latency: 1us }
  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, nics_per_node: 4, latency: 2us }
)" + parallel + R"(workload: { mode: train, seq_len: 256, global_batch: 16 }
routing: { sampling: counts, distribution: power_law, alpha: 1.2, capacity_factor: 1.0 }
network: { model: flow }
seed: 3
)" + extra;
  return parse_scenario(config::Document::load_string(yaml, "small.yaml"));
}

}  // namespace

TEST_CASE("two collectives on different streams sharing a link slow each other down", "[simulate][streams]") {
  const double bytes = 80e6;  // 200 us at 400 GB/s
  const SimTime alone_send = play_pair(true, false, bytes);
  const SimTime alone_a2a = play_pair(false, true, bytes);
  const SimTime both = play_pair(true, true, bytes);
  REQUIRE(alone_send > 200_us);
  REQUIRE(alone_a2a > 200_us);
  // They start together on separate streams, so neither waits for the other, but they share GPU
  // 0's NVLink egress: together they take as long as one transfer of twice the bytes.
  REQUIRE(both >= alone_send * 2 - 5_us);
  REQUIRE(both <= alone_send * 2 + 5_us);
}

TEST_CASE("separate DP/PP streams: never slower, DP and PP time in the breakdown", "[simulate][streams]") {
  const Scenario s = small_train();
  SimulateOptions one, sep;
  one.build.separate_comm_streams = false;
  sep.build.separate_comm_streams = true;
  const StepReport a = simulate_step(s, one);
  const StepReport b = simulate_step(s, sep);
  REQUIRE(b.data_parallel_us > 0);
  REQUIRE(b.pipeline_us > 0);
  REQUIRE(a.data_parallel_us > 0);
  REQUIRE(b.exec.step_time < a.exec.step_time);
  // Same work either way: op counts and bytes do not depend on the streams.
  REQUIRE(a.built.graph.size() == b.built.graph.size());
  REQUIRE(a.payload_bytes == b.payload_bytes);
  REQUIRE(b.bytes_sent == b.bytes_received);
}

TEST_CASE("conservation: a real step passes; each corrupted count fails loudly", "[simulate][conservation]") {
  for (const std::string& extra : {std::string(), std::string("execution: { overlap_chunks: 3 }\n")}) {
    Scenario s = small_train(extra);
    s.routing.pad_to_capacity = extra.empty();  // padded buffers once, real rows once
    SimulateOptions o;
    o.build.overlap_chunks = s.execution.overlap_chunks;
    const StepReport r = simulate_step(s, o);  // checks conservation itself
    const BuiltStep& b = r.built;
    REQUIRE(b.training);
    REQUIRE(b.dropped > 0);
    REQUIRE_FALSE(b.moe_layers.empty());
    for (const auto& l : b.moe_layers) {
      REQUIRE(l.rows_fed_fwd == l.rows_expected);
      REQUIRE(l.rows_fed_bwd == l.rows_expected);
    }
    if (s.routing.pad_to_capacity) REQUIRE(b.moe_layers[0].rows_expected > b.moe_layers[0].stats.kept);

    // Rebuild the ledger the way simulate_step does: bytes per collective, all delivered.
    std::vector<double> sent(b.collectives.size()), recv(b.collectives.size());
    for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = recv[i] = b.collectives[i].total_bytes();
    REQUIRE_NOTHROW(check_conservation(b, sent, recv));

    // Each corruption below must be caught.
    {
      BuiltStep c(1);
      c.moe_layers = b.moe_layers;
      c.routed = b.routed, c.kept = b.kept, c.dropped = b.dropped;
      c.collectives = b.collectives;
      c.training = true;
      REQUIRE_NOTHROW(check_conservation(c, sent, recv));
      c.moe_layers[1].stats.dropped -= 1;  // a dropped assignment lost
      c.dropped -= 1;
      REQUIRE_THROWS_WITH(check_conservation(c, sent, recv), Catch::Contains("routed but"));
    }
    {
      BuiltStep c(1);
      c.moe_layers = b.moe_layers;
      c.routed = b.routed, c.kept = b.kept, c.dropped = b.dropped;
      c.collectives = b.collectives;
      c.training = true;
      c.moe_layers[0].rows_fed_fwd -= 1;  // an expert GEMM computed one row too few
      REQUIRE_THROWS_WITH(check_conservation(c, sent, recv), Catch::Contains("forward expert GEMMs"));
      c.moe_layers[0].rows_fed_fwd += 1;
      REQUIRE_NOTHROW(check_conservation(c, sent, recv));
      c.moe_layers[0].rows_fed_bwd += 2;
      REQUIRE_THROWS_WITH(check_conservation(c, sent, recv), Catch::Contains("backward expert GEMMs"));
      c.moe_layers[0].rows_fed_bwd = 0;  // a training step whose backward computed no expert rows
      REQUIRE_THROWS_WITH(check_conservation(c, sent, recv), Catch::Contains("backward expert GEMMs"));
    }
    {
      BuiltStep c(1);
      c.moe_layers = b.moe_layers;
      c.routed = b.routed, c.kept = b.kept + 1, c.dropped = b.dropped;
      c.collectives = b.collectives;
      c.training = true;
      REQUIRE_THROWS_WITH(check_conservation(c, sent, recv), Catch::Contains("step totals"));
    }
    {
      auto short_recv = recv;
      short_recv[short_recv.size() / 2] *= 0.999;  // one collective lost bytes in the network
      REQUIRE_THROWS_WITH(check_conservation(b, sent, short_recv), Catch::Contains("delivered"));
      short_recv.pop_back();
      REQUIRE_THROWS_WITH(check_conservation(b, sent, short_recv), Catch::Contains("byte counts"));
    }
  }
}

TEST_CASE("the analytical and flow backends keep the byte ledger", "[simulate][conservation]") {
  for (const char* net : {"network: { model: analytical }\n", ""}) {
    Scenario s = small_train();
    if (*net) s.network.model = NetworkModel::kAnalytical;
    const StepReport r = simulate_step(s, {});
    REQUIRE(r.bytes_sent > 0);
    REQUIRE(r.bytes_sent == r.bytes_received);
    REQUIRE(r.payload_bytes > 0);
    REQUIRE(r.flows > 0);
  }
}

TEST_CASE("routing threads: the step report is identical for any thread count", "[simulate][threads]") {
  for (const char* sampling : {"token", "counts"}) {
    Scenario s = small_train(std::string());
    s.routing.sampling =
        std::string(sampling) == "token" ? models::SamplingMode::kToken : models::SamplingMode::kCounts;
    SimulateOptions o1, o3;
    o1.build.routing_threads = 1;
    o3.build.routing_threads = 3;
    const StepReport a = simulate_step(s, o1), b = simulate_step(s, o3);
    REQUIRE(a.exec.step_time == b.exec.step_time);
    REQUIRE(a.built.dropped == b.built.dropped);
    REQUIRE(a.built.moe_layers.size() == b.built.moe_layers.size());
    for (std::size_t i = 0; i < a.built.moe_layers.size(); ++i)
      REQUIRE(a.built.moe_layers[i].stats.expert_kept == b.built.moe_layers[i].stats.expert_kept);
    for (std::size_t g = 0; g < a.exec.per_gpu.size(); ++g)
      REQUIRE(a.exec.per_gpu[g].busy_end == b.exec.per_gpu[g].busy_end);
  }
}

TEST_CASE("a full step replays a routing trace", "[simulate][trace-replay]") {
  // Every token of every MoE layer goes to experts 0 and 5 (ranks 0 and 2 of EP4): the routed
  // counts per layer are exactly the trace's, and the expert work lands on those ranks only.
  const std::string csv = (std::filesystem::temp_directory_path() / "moesim_step_trace.csv").string();
  {
    std::ofstream f(csv);
    f << "layer,token,expert_0,expert_1\n";
    for (int l = 0; l < 32; ++l)
      for (int t = 0; t < 64; ++t) f << l << "," << t << ",0,5\n";
  }
  Scenario s = small_train("");
  s.routing.distribution = models::Distribution::kTrace;
  s.routing.sampling = models::SamplingMode::kToken;  // counts + trace is a config error
  s.routing.trace_file = csv;
  s.routing.capacity_factor.reset();  // dropless: every assignment is kept
  const StepReport r = simulate_step(s, SimulateOptions{});
  REQUIRE(r.built.dropped == 0);
  for (const auto& l : r.built.moe_layers) {
    REQUIRE(l.stats.routed == 2 * l.stats.tokens);
    for (int e = 0; e < 8; ++e) {
      const std::int64_t want = (e == 0 || e == 5) ? l.stats.tokens : 0;
      REQUIRE(l.stats.expert_routed[static_cast<std::size_t>(e)] == want);
    }
  }
  std::filesystem::remove(csv);
}

TEST_CASE("hierarchical all-to-all: same payload, staged bytes sent twice, conserved, and a different time",
          "[simulate][all_to_all]") {
  // EP over both nodes (2 x 4 GPUs), so dispatch and combine cross the NICs.
  const std::string layout = "parallel: { dp: 8, tp: 1, ep: 8, pp: 1, micro_batches: 2 }\n";
  Scenario direct = small_train("", layout);
  Scenario hier = small_train("execution: { all_to_all: hierarchical }\n", layout);
  REQUIRE(hier.execution.all_to_all == "hierarchical");
  for (const NetworkModel m : {NetworkModel::kFlow, NetworkModel::kAnalytical}) {
    direct.network.model = hier.network.model = m;
    const StepReport a = simulate_step(direct, {});
    const StepReport b = simulate_step(hier, {});
    // The routing and the payload do not depend on how the exchange is done.
    REQUIRE(a.payload_bytes == b.payload_bytes);
    // Bytes for another node's GPU on another rail go over NVLink to the same-rail GPU first,
    // then over the NIC: sent twice, so the network carries more than with direct flows.
    REQUIRE(b.bytes_sent > a.bytes_sent);
    REQUIRE(a.bytes_sent == a.bytes_received);
    REQUIRE(b.bytes_sent == b.bytes_received);
    REQUIRE(b.exec.step_time != a.exec.step_time);
  }
  // Pipelining the two phases (DeepEP-style) moves the same bytes in more, smaller flows. Here
  // the messages are small (a 256-token micro-batch): the overlap and the latencies that every
  // chunk pays again nearly cancel (with NVLink at 0.8 of its line rate the overlap wins by
  // ~0.01%), so the step changes but by less than the extra latencies; the closed-form case in
  // tests/hardware/collectives_test.cpp shows the gain for MiB messages.
  Scenario piped = small_train("execution: { all_to_all: hierarchical, all_to_all_chunks: 4 }\n", layout);
  REQUIRE(piped.execution.all_to_all_chunks == 4);
  hier.network.model = piped.network.model = NetworkModel::kFlow;
  const StepReport b = simulate_step(hier, {});
  const StepReport c = simulate_step(piped, {});
  REQUIRE(c.payload_bytes == b.payload_bytes);
  REQUIRE(c.bytes_sent == Approx(b.bytes_sent).epsilon(1e-12));
  REQUIRE(c.bytes_sent == c.bytes_received);
  REQUIRE(c.flows > b.flows);
  INFO("back to back " << b.exec.step_time.to_us() << " us, 4 chunks " << c.exec.step_time.to_us() << " us");
  REQUIRE(c.exec.step_time != b.exec.step_time);
  REQUIRE(c.exec.step_time <
          b.exec.step_time + SimTime::from_ps(static_cast<std::int64_t>(c.built.collective_ops) * 3 * 3'000'000));
}

TEST_CASE("execution.all_reduce picks the tensor-parallel all-reduce algorithm", "[simulate][all_reduce]") {
  const std::string layout = "parallel: { dp: 2, tp: 2, ep: 2, pp: 2, micro_batches: 4 }\n";
  const Scenario ring = small_train("", layout);
  const Scenario tree = small_train("execution: { all_reduce: tree }\n", layout);
  REQUIRE(tree.execution.all_reduce == "tree");
  const StepReport a = simulate_step(ring, {});
  const StepReport b = simulate_step(tree, {});
  REQUIRE(a.payload_bytes == b.payload_bytes);
  // Both move 2(n-1) x size in total (ring: 2(n-1) steps of size/n per rank; tree: size up and
  // size down on each of its n-1 edges), but the ring takes 2(n-1) phases of n flows and the
  // pipelined tree one phase of 2(n-1) flows: 4 flows against 2 per all-reduce for n = 2.
  REQUIRE(b.bytes_sent == a.bytes_sent);
  REQUIRE(b.flows < a.flows);
  REQUIRE(b.bytes_sent == b.bytes_received);
  REQUIRE(b.exec.step_time != a.exec.step_time);
}

namespace {

Scenario dispatch_scenario(const std::string& cluster, const std::string& execution, int ep) {
  const std::string yaml = "name: d\nmodel: deepseek-v3\ncluster:\n" + cluster +
                           fmt::format("parallel: {{ dp: {0}, ep: {0} }}\n", ep) +
                           "workload: { mode: dispatch, tokens_per_rank: 1024 }\n"
                           "routing: { distribution: uniform, capacity_factor: none, n_groups: 1, topk_group: 1 }\n"
                           "execution: { dispatch_dtype: fp8, " +
                           execution + " }\nseed: 5\n";
  return parse_scenario(config::Document::load_string(yaml, "d.yaml"));
}

const char* kTwoNodes =
    "  gpu: h800\n  nodes: 2\n  gpus_per_node: 8\n"
    "  intra_node: { fabric: nvswitch, bandwidth: 200GB/s }\n"
    "  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s }\n";

}  // namespace

TEST_CASE("deepep_normal sends a token once per destination node: fewer NIC bytes, faster than nccl_a2a",
          "[simulate][dispatcher]") {
  const DispatchReport a2a = simulate_dispatch(dispatch_scenario(kTwoNodes, "dispatcher: nccl_a2a", 16));
  const DispatchReport dn = simulate_dispatch(dispatch_scenario(kTwoNodes, "dispatcher: deepep_normal", 16));
  // Same routing (same seed and streams): the logical DeepEP byte counts agree.
  REQUIRE(dn.mean_dest_nodes == a2a.mean_dest_nodes);
  REQUIRE(dn.dispatch.rdma_logical_bytes == a2a.dispatch.rdma_logical_bytes);
  // 8 of 256 experts uniformly: ~6.5 distinct ranks and ~2 nodes per token vs 8 rows.
  REQUIRE(dn.mean_dest_ranks == Approx(6.52).margin(0.1));
  REQUIRE(dn.mean_dest_nodes == Approx(1.99).margin(0.05));
  // The matrix keeps one row per (token, rank) inside nodes and per (token, node) across them.
  REQUIRE(dn.dispatch.payload_bytes < a2a.dispatch.payload_bytes);
  REQUIRE(dn.dispatch.time_us < a2a.dispatch.time_us);
  REQUIRE(dn.combine.time_us < a2a.combine.time_us);
  // Bytes moved are reported without the kernel-efficiency inflation of the timing.
  REQUIRE(dn.dispatch.network_bytes < a2a.dispatch.network_bytes);
}

TEST_CASE("pure-RDMA low latency: one node without NVLink talks through its NICs", "[simulate][dispatcher]") {
  const std::string nvl = "  gpu: h800\n  nodes: 1\n  gpus_per_node: 8\n  intra_node: { fabric: nvswitch }\n";
  const std::string rdma =
      "  gpu: h800\n  nodes: 1\n  gpus_per_node: 8\n  intra_node: { fabric: none }\n"
      "  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s }\n";
  const DispatchReport over_nvl = simulate_dispatch(dispatch_scenario(nvl, "dispatcher: deepep_ll", 8));
  const DispatchReport over_nic = simulate_dispatch(dispatch_scenario(rdma, "dispatcher: deepep_ll", 8));
  // NVLink 200 GB/s x 0.8 vs one 50 GB/s NIC x 0.97 per GPU: about 3.3x slower.
  REQUIRE(over_nic.dispatch.time_us > 3.0 * over_nvl.dispatch.time_us);
  REQUIRE(over_nic.dispatch.time_us < 3.6 * over_nvl.dispatch.time_us);
}

TEST_CASE("a training step with deepep_normal: conserved, fewer dispatch bytes with top-8 routing",
          "[simulate][dispatcher]") {
  const std::string par = "parallel: { dp: 8, tp: 1, ep: 8, pp: 1, micro_batches: 2 }\n";
  const auto mk = [&](const std::string& d) {
    const std::string yaml = std::string("name: t\nmodel: qwen3-30b-a3b\ncluster:\n") +
                             "  gpu: h100-sxm\n  nodes: 2\n  gpus_per_node: 4\n"
                             "  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, nics_per_node: 4 }\n" +
                             par +
                             "workload: { mode: train, seq_len: 512, global_batch: 16 }\n"
                             "routing: { distribution: uniform, capacity_factor: none }\n"
                             "execution: { dispatcher: " +
                             d + " }\nseed: 3\n";
    return parse_scenario(config::Document::load_string(yaml, "t.yaml"));
  };
  const Scenario sa = mk("nccl_a2a"), sd = mk("deepep_normal");
  const StepReport a = simulate_step(sa, simulate_options(sa));
  const StepReport d = simulate_step(sd, simulate_options(sd));  // throws if bytes or rows are not conserved
  // Same routing and the same expert rows computed; top-8 of 128 experts on 8 ranks puts ~5.3
  // of a token's 8 rows on distinct ranks, so the per-(token, rank) rows are fewer.
  REQUIRE(d.built.kept == a.built.kept);
  REQUIRE(d.payload_bytes < a.payload_bytes);
  REQUIRE(d.dispatch_us != a.dispatch_us);
}

TEST_CASE("execution.weights_dtype fp8: linear-layer GEMMs read 1-byte weights at the FP8 peak", "[simulate][fp8]") {
  // Issue 17 (d): decode always read bf16 weights. fp8 halves the weight bytes and doubles the
  // tensor peak of the attention projections, FFNs and experts; the LM head stays bf16.
  const std::string layout = "parallel: { dp: 8, tp: 1, ep: 8, pp: 1 }\n";
  auto decode = [&](const std::string& extra) {
    std::string y = R"(name: small
model: mixtral-8x7b
cluster:
  gpu: h100-sxm
  nodes: 2
  gpus_per_node: 4
  intra_node: { fabric: nvswitch, bandwidth: 450GB/s, latency: 1us }
  inter_node: { fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, nics_per_node: 4, latency: 2us }
)" + layout + R"(workload: { mode: decode, batch: 64, context_len: 2048 }
routing: { sampling: counts }
network: { model: analytical }
seed: 3
)" + extra;
    return parse_scenario(config::Document::load_string(y, "small.yaml"));
  };
  const Scenario bf = decode("");
  const Scenario f8 = decode("execution: { weights_dtype: fp8 }\n");
  REQUIRE(bf.execution.weights_dtype == "bf16");
  REQUIRE(f8.execution.weights_dtype == "fp8");
  const StepReport a = simulate_step(bf, {});
  const StepReport b = simulate_step(f8, {});
  const auto& ka = a.built.kernels;
  const auto& kb = b.built.kernels;
  // Memory-bound decode GEMMs: close to half the time (the fixed launch cost stays).
  for (const char* name : {"qkv", "o_proj", "expert_fc1", "expert_fc2"}) {
    INFO(name);
    REQUIRE(kb.at(name).time < ka.at(name).time);
    REQUIRE(kb.at(name).time.to_s() > 0.4 * ka.at(name).time.to_s());
  }
  REQUIRE(kb.at("expert_fc1").time.to_s() < 0.75 * ka.at("expert_fc1").time.to_s());
  REQUIRE(kb.at("lm_head").time == ka.at("lm_head").time);      // kept in bf16
  REQUIRE(b.built.flops.model == Approx(a.built.flops.model));  // same work
  REQUIRE(b.exec.step_time < a.exec.step_time);
  // A GPU without FP8 tensor cores is a located error.
  std::string y =
      "name: x\nmodel: mixtral-8x7b\ncluster: { gpu: a100-80gb-sxm, nodes: 1, gpus_per_node: 8,\n"
      "  intra_node: { fabric: nvswitch, bandwidth: 300GB/s, latency: 1us } }\n"
      "parallel: { dp: 8, tp: 1, ep: 8, pp: 1 }\nworkload: { mode: decode, batch: 64, context_len: 2048 }\n"
      "execution: { weights_dtype: fp8 }\n";
  try {
    parse_scenario(config::Document::load_string(y, "a100.yaml"));
    FAIL("expected an error");
  } catch (const config::ConfigError& e) {
    const std::string m = e.what();
    INFO(m);
    REQUIRE(m.find("a100.yaml:7") != std::string::npos);
    REQUIRE(m.find("weights_dtype") != std::string::npos);
  }
}

TEST_CASE("deepep_normal with few SMs is SM-bound: bytes each GPU sends and receives over comm_sms x per-SM rate",
          "[simulate][dispatcher][sm]") {
  const DispatchReport many =
      simulate_dispatch(dispatch_scenario(kTwoNodes, "dispatcher: deepep_normal, comm_sms: 24", 16));
  const DispatchReport one =
      simulate_dispatch(dispatch_scenario(kTwoNodes, "dispatcher: deepep_normal, comm_sms: 1", 16));
  const DispatchReport none = simulate_dispatch(dispatch_scenario(kTwoNodes, "dispatcher: deepep_normal", 16));
  // No SM budget given: no floor. 24 SMs: the network binds, the floor is below it.
  REQUIRE(none.dispatch.sm_floor_us == 0);
  REQUIRE(many.dispatch.sm_floor_us > 0);
  REQUIRE(many.dispatch.time_us == none.dispatch.time_us);
  // One SM: 24x the floor, above the network time, and the kernel takes exactly the floor.
  REQUIRE(one.dispatch.sm_floor_us == Approx(24 * many.dispatch.sm_floor_us));
  REQUIRE(one.dispatch.time_us == Approx(one.dispatch.sm_floor_us));
  REQUIRE(one.dispatch.time_us > none.dispatch.time_us);
  // A faster SM copy rate lowers the floor in proportion.
  const DispatchReport fast = simulate_dispatch(
      dispatch_scenario(kTwoNodes, "dispatcher: deepep_normal, comm_sms: 1, sm_copy_bandwidth: 240GB/s", 16));
  REQUIRE(fast.dispatch.sm_floor_us == Approx(one.dispatch.sm_floor_us * 60.0 / 240.0));
}

TEST_CASE("deepep_normal step collectives carry the SM-bound floor; the network backend honours it",
          "[simulate][dispatcher][sm]") {
  const std::string layout = "parallel: { dp: 8, ep: 8 }\n";
  const Scenario base = small_train("execution: { dispatcher: deepep_normal }\n", layout);
  // One SM at 1 GB/s: the floor is far above the network time of these small all-to-alls.
  const Scenario few =
      small_train("execution: { dispatcher: deepep_normal, comm_sms: 1, sm_copy_bandwidth: 1GB/s }\n", layout);
  const StepReport a = simulate_step(base, simulate_options(base)), b = simulate_step(few, simulate_options(few));
  bool floors = false;
  for (const auto& c : b.built.collectives)
    if (c.kind == CollectiveKind::kAllToAllV) floors = floors || c.min_time > SimTime::zero();
  for (const auto& c : a.built.collectives) REQUIRE(c.min_time == SimTime::zero());
  REQUIRE(floors);
  REQUIRE(b.exec.step_time > a.exec.step_time);
}
