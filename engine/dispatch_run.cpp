#include "engine/dispatch_run.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <stdexcept>

#include "engine/simulate.hpp"
#include "engine/step_builder.hpp"
#include "hardware/collectives.hpp"
#include "models/placement.hpp"
#include "models/router.hpp"

namespace moesim::engine {

namespace {

models::WireFormat wire(const std::string& dtype) {
  return dtype == "fp8" ? models::WireFormat::kFp8 : models::WireFormat::kBf16;
}

DispatchOpReport play(const Scenario& s, const hw::Topology& topo, const std::vector<std::uint64_t>& matrix,
                      int ranks) {
  CollectiveRequest req;
  req.kind = CollectiveKind::kAllToAllV;
  for (int r = 0; r < ranks; ++r) req.gpus.push_back(r);
  req.matrix = std::make_shared<const std::vector<double>>(matrix.begin(), matrix.end());
  if (s.execution.dispatcher == "deepep_normal") req.wire_inflation = 1.0 / kDeepepNormalEfficiency;
  const hw::CollectivePlan plan = plan_collective(topo, req, hw::collective_algo(s.execution.all_to_all),
                                                  hw::CollectiveAlgo::kRing, s.execution.all_to_all_chunks);
  hw::CollectiveOptions opts;
  opts.launch_overhead = s.cluster.gpu.kernel_launch_overhead;
  const auto model = s.network.model == NetworkModel::kFlow ? hw::NetworkModel::kFlow : hw::NetworkModel::kAnalytical;
  DispatchOpReport r;
  const hw::CollectiveResult cr = hw::run_collective(topo, plan, model, opts);
  r.time_us = cr.time.to_us();
  // SM-bound floor of DeepEP-family kernels: every byte a GPU sends or receives is copied by
  // one of its comm_sms SMs (kDeepepSmCopyBandwidth).
  if (s.execution.dispatcher == "deepep_normal" && s.execution.comm_sms > 0) {
    const double worst = max_handled_bytes(*req.matrix, ranks);
    const double per_sm = s.execution.sm_copy_bandwidth.value_or(kDeepepSmCopyBandwidth);
    r.sm_floor_us = worst / (s.execution.comm_sms * per_sm) * 1e6;
    r.time_us = std::max(r.time_us, r.sm_floor_us);
  }
  r.phases = cr.phases;
  for (double b : *req.matrix) r.payload_bytes += b;
  for (double b : cr.per_link_bytes) r.network_bytes += b / req.wire_inflation;
  return r;
}

}  // namespace

DispatchReport simulate_dispatch(const Scenario& s) {
  if (s.workload.mode != WorkloadMode::kDispatch) throw std::invalid_argument("simulate_dispatch needs mode: dispatch");
  const auto& m = s.model;
  int layer = -1;
  for (std::size_t l = 0; l < m.moe_layer.size(); ++l)
    if (m.moe_layer[l]) {
      layer = static_cast<int>(l);
      break;
    }
  if (layer < 0) throw std::invalid_argument("the model has no MoE layer to dispatch");
  const int ranks = s.parallel.ep;
  DispatchReport rep;
  rep.ranks = ranks;
  rep.nodes = (ranks + s.cluster.gpus_per_node - 1) / s.cluster.gpus_per_node;
  rep.tokens_per_rank = s.workload.tokens_per_rank;

  models::RouteRequest req;
  req.tokens_per_group = s.workload.tokens_per_rank;
  req.groups = ranks;
  req.step = 0;
  req.seed = s.seed;
  req.ep_ranks = ranks;
  req.keep_assignments = true;
  std::optional<models::RoutingTrace> trace;
  if (s.routing.distribution == models::Distribution::kTrace)
    trace = models::load_routing_trace(s.routing.trace_file, m, s.routing.top_k);
  const models::Placement placement = models::place_contiguous(m.experts, ranks);
  const int gpn = s.cluster.gpus_per_node;
  const bool deepep_normal = s.execution.dispatcher == "deepep_normal";
  models::DestinationMap dest;
  std::vector<int> local_of_rank;
  if (deepep_normal) {
    const bool spans = ranks > gpn;
    dest.replicas = &placement.replicas;
    dest.nodes = spans ? ranks / gpn : 1;
    for (int r = 0; r < ranks; ++r) {
      dest.node_of_rank.push_back(spans ? r / gpn : 0);
      local_of_rank.push_back(spans ? r % gpn : r);
    }
    req.dest = &dest;
  }
  const models::LayerRouting lr = models::route_layer(s.routing, layer, req, trace ? &*trace : nullptr);
  rep.drop_fraction = lr.stats.drop_fraction;
  rep.max_over_mean_load = lr.stats.max_over_mean;

  models::ByteMatrixOptions bo;
  bo.hidden = m.hidden;
  bo.dispatch = wire(s.execution.dispatch_dtype);
  bo.combine = models::WireFormat::kBf16;
  bo.pad_to_capacity = s.routing.pad_to_capacity;
  const models::DispatchMatrices dm =
      deepep_normal ? models::build_deepep_normal_matrices(lr, placement, bo, dest.node_of_rank, local_of_rank)
                    : models::build_dispatch_matrices(lr, placement, bo);

  const hw::Topology topo = hw::build_topology(s.cluster);
  rep.dispatch = play(s, topo, dm.dispatch_bytes, ranks);
  rep.combine = play(s, topo, dm.combine_bytes, ranks);

  // DeepEP's logical byte counts, for rank 0's tokens (DeepEP prints local rank 0 of a node).
  const double row_d = static_cast<double>(models::row_bytes(m.hidden, bo.dispatch));
  const double row_c = static_cast<double>(models::row_bytes(m.hidden, models::WireFormat::kBf16));
  const models::GroupRouting& g0 = lr.groups.front();
  const int k = g0.top_k;
  std::int64_t dest_ranks = 0, dest_nodes = 0, selections = 0;
  std::vector<std::int64_t> rank_seen(static_cast<std::size_t>(ranks), -1),
      node_seen(static_cast<std::size_t>(rep.nodes), -1);
  for (std::int64_t t = 0; t < g0.tokens; ++t) {
    for (int j = 0; j < k; ++j) {
      const std::size_t slot = static_cast<std::size_t>(t * k + j);
      const int e = g0.expert[slot];
      if (e < 0 || g0.keep[slot] == 0) continue;
      ++selections;
      const int r = e / placement.slots_per_rank;
      if (rank_seen[static_cast<std::size_t>(r)] != t) {
        rank_seen[static_cast<std::size_t>(r)] = t;
        ++dest_ranks;
      }
      const int nd = r / gpn;
      if (node_seen[static_cast<std::size_t>(nd)] != t) {
        node_seen[static_cast<std::size_t>(nd)] = t;
        ++dest_nodes;
      }
    }
  }
  // NVLink definition: rows *received* by rank 0 (dedup per (token, rank)), over every source.
  std::int64_t recv_rows = 0;
  for (int src = 0; src < ranks; ++src) {
    const models::GroupRouting& g = lr.groups[static_cast<std::size_t>(src)];
    for (std::int64_t t = 0; t < g.tokens; ++t) {
      bool hit = false;
      for (int j = 0; j < k && !hit; ++j) {
        const std::size_t slot = static_cast<std::size_t>(t * k + j);
        const int e = g.expert[slot];
        hit = e >= 0 && g.keep[slot] != 0 && e / placement.slots_per_rank == 0;
      }
      recv_rows += hit ? 1 : 0;
    }
  }
  const double tok = static_cast<double>(std::max<std::int64_t>(1, g0.tokens));
  rep.mean_dest_ranks = static_cast<double>(dest_ranks) / tok;
  rep.mean_dest_nodes = static_cast<double>(dest_nodes) / tok;
  rep.dispatch.nvl_logical_bytes = static_cast<double>(recv_rows) * row_d;
  rep.combine.nvl_logical_bytes = static_cast<double>(recv_rows) * row_c;
  rep.dispatch.rdma_logical_bytes = static_cast<double>(dest_nodes) * row_d;
  rep.combine.rdma_logical_bytes = static_cast<double>(dest_nodes) * row_c;
  rep.dispatch.ll_logical_bytes = static_cast<double>(selections) * row_d;
  rep.combine.ll_logical_bytes = static_cast<double>(selections) * row_c;
  return rep;
}

}  // namespace moesim::engine
