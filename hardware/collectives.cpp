#include "hardware/collectives.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace moesim::hw {

namespace {
std::uint64_t pair_key(int src, int dst) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(src)) << 32) | static_cast<std::uint32_t>(dst);
}

void add_flow(const Topology& topo, FlowBatch& b, int src, int dst, double bytes, std::vector<LinkId>& scratch) {
  if (src == dst || bytes <= 0) return;
  scratch.clear();
  topo.route(src, dst, pair_key(src, dst), scratch);
  b.add(scratch, bytes);
}

void check_group(const Topology& topo, const std::vector<int>& group) {
  if (group.empty()) throw std::invalid_argument("collective: empty group");
  std::vector<int> sorted = group;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    throw std::invalid_argument("collective: a GPU appears twice in the group");
  if (sorted.front() < 0 || sorted.back() >= topo.gpu_count())
    throw std::invalid_argument(fmt::format("collective: GPU id out of range 0..{}", topo.gpu_count() - 1));
}

/// Ring steps: `steps` phases, each rank sends `chunk` bytes to its successor.
CollectivePlan ring_plan(const Topology& topo, const std::vector<int>& group, CollectiveKind kind, double size,
                         double chunk, int steps) {
  CollectivePlan p{kind, static_cast<int>(group.size()), size, {}, {}};
  const int n = static_cast<int>(group.size());
  if (n < 2) return p;
  std::vector<LinkId> scratch;
  FlowBatch step;
  for (int r = 0; r < n; ++r) add_flow(topo, step, group[r], group[(r + 1) % n], chunk, scratch);
  p.add_phase(std::move(step), static_cast<std::uint32_t>(steps));
  return p;
}
}  // namespace

void CollectivePlan::check() const {
  if (repeat.size() != phases.size() || std::find(repeat.begin(), repeat.end(), 0u) != repeat.end())
    throw std::logic_error("CollectivePlan: repeat must hold one count >= 1 per phase (use add_phase)");
}

FlowBatch next_phase_run(std::vector<FlowBatch>& phases, const std::vector<std::uint32_t>& repeat, std::size_t& next,
                         std::uint32_t& runs_done) {
  const std::size_t i = next;
  if (++runs_done < repeat[i]) return phases[i];
  ++next;
  runs_done = 0;
  return std::move(phases[i]);
}

CollectiveAlgo collective_algo(const std::string& name) {
  if (name == "direct") return CollectiveAlgo::kDirect;
  if (name == "hierarchical") return CollectiveAlgo::kHierarchical;
  if (name == "ring") return CollectiveAlgo::kRing;
  if (name == "tree") return CollectiveAlgo::kTree;
  throw std::invalid_argument("unknown collective algorithm '" + name + "'");
}

std::string to_string(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::kAllToAllv:
      return "all_to_allv";
    case CollectiveKind::kAllReduce:
      return "all_reduce";
    case CollectiveKind::kAllGather:
      return "all_gather";
    case CollectiveKind::kReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::kSendRecv:
      return "send_recv";
  }
  return "?";
}

double busbw_factor(CollectiveKind k, int n) {
  if (n <= 1) return k == CollectiveKind::kSendRecv ? 1.0 : 0.0;
  switch (k) {
    case CollectiveKind::kAllReduce:
      return 2.0 * (n - 1) / n;
    case CollectiveKind::kAllGather:
    case CollectiveKind::kReduceScatter:
    case CollectiveKind::kAllToAllv:
      return static_cast<double>(n - 1) / n;
    case CollectiveKind::kSendRecv:
      return 1.0;
  }
  return 1.0;
}

std::vector<int> all_gpus(const Topology& topo) {
  std::vector<int> g(static_cast<std::size_t>(topo.gpu_count()));
  for (int i = 0; i < topo.gpu_count(); ++i) g[static_cast<std::size_t>(i)] = i;
  return g;
}

CollectivePlan plan_all_to_allv(const Topology& topo, const std::vector<int>& group, const ByteMatrix& m,
                                CollectiveAlgo algo, int chunks) {
  if (chunks < 1) throw std::invalid_argument("all_to_allv: chunks must be >= 1");
  if (chunks > 1 && algo != CollectiveAlgo::kHierarchical)
    throw std::invalid_argument("all_to_allv: chunks > 1 needs the hierarchical algorithm");
  check_group(topo, group);
  const int n = static_cast<int>(group.size());
  if (m.n != n || m.bytes.size() != static_cast<std::size_t>(n) * n)
    throw std::invalid_argument(fmt::format("all_to_allv: byte matrix is {}x{}, group has {} ranks", m.n, m.n, n));
  for (double b : m.bytes)
    if (!(b >= 0) || !std::isfinite(b)) throw std::invalid_argument("all_to_allv: bytes must be finite and >= 0");
  CollectivePlan p{CollectiveKind::kAllToAllv, n, 0, {}, {}};
  for (int i = 0; i < n; ++i) {
    double row = 0;
    for (int j = 0; j < n; ++j) row += m.at(i, j);
    p.size_bytes = std::max(p.size_bytes, row);
  }
  std::vector<LinkId> scratch;
  if (algo == CollectiveAlgo::kDirect) {
    FlowBatch b;
    b.reserve(static_cast<std::size_t>(n) * n, 6);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) add_flow(topo, b, group[i], group[j], m.at(i, j), scratch);
    p.add_phase(std::move(b));
    return p;
  }
  if (algo != CollectiveAlgo::kHierarchical)
    throw std::invalid_argument("all_to_allv: algo must be direct or hierarchical");
  // Hierarchical: the group must be whole nodes; rank -> (node, local index). A group inside one
  // node has no inter-node phase: that is the direct exchange.
  const int gpn = topo.gpus_per_node();
  bool one_node = true;
  for (int g : group) one_node = one_node && topo.node_of(g) == topo.node_of(group.front());
  if (one_node) return plan_all_to_allv(topo, group, m, CollectiveAlgo::kDirect);
  std::vector<int> rank_of(static_cast<std::size_t>(topo.gpu_count()), -1);
  for (int r = 0; r < n; ++r) rank_of[static_cast<std::size_t>(group[r])] = r;
  std::vector<int> nodes;
  for (int g : group) nodes.push_back(topo.node_of(g));
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  for (int nd : nodes)
    for (int l = 0; l < gpn; ++l)
      if (rank_of[static_cast<std::size_t>(nd * gpn + l)] < 0)
        throw std::invalid_argument("all_to_allv hierarchical: the group must consist of whole nodes");
  auto rank = [&](int node, int local) { return rank_of[static_cast<std::size_t>(node * gpn + local)]; };
  FlowBatch p1, p2;
  for (int a : nodes)
    for (int i = 0; i < gpn; ++i) {
      const int src = a * gpn + i;
      const int rs = rank(a, i);
      for (int j = 0; j < gpn; ++j) {
        double to_rail = 0;  // everything for rail j on other nodes, staged at (a, j)
        for (int b : nodes)
          if (b != a) to_rail += m.at(rs, rank(b, j));
        to_rail += m.at(rs, rank(a, j));  // intra-node traffic goes straight to its destination
        add_flow(topo, p1, src, a * gpn + j, to_rail, scratch);
      }
    }
  for (int a : nodes)
    for (int j = 0; j < gpn; ++j)
      for (int b : nodes) {
        if (b == a) continue;
        double bytes = 0;
        for (int i = 0; i < gpn; ++i) bytes += m.at(rank(a, i), rank(b, j));
        add_flow(topo, p2, a * gpn + j, b * gpn + j, bytes, scratch);
      }
  if (chunks == 1) {
    p.add_phase(std::move(p1));
    p.add_phase(std::move(p2));
    return p;
  }
  // Pipelined: phase c = NVLink part c + rail part c - 1.
  const auto append = [&](FlowBatch& dst, const FlowBatch& src) {
    for (std::size_t f = 0; f < src.size(); ++f)
      dst.add(std::span<const LinkId>(src.links.data() + src.offsets[f], src.offsets[f + 1] - src.offsets[f]),
              src.bytes[f] / chunks);
  };
  for (int c = 0; c <= chunks; ++c) {
    FlowBatch b;
    if (c < chunks) append(b, p1);
    if (c > 0) append(b, p2);
    p.add_phase(std::move(b));
  }
  return p;
}

CollectivePlan plan_all_reduce(const Topology& topo, const std::vector<int>& group, double bytes, CollectiveAlgo algo) {
  check_group(topo, group);
  const int n = static_cast<int>(group.size());
  if (algo == CollectiveAlgo::kRing)
    return ring_plan(topo, group, CollectiveKind::kAllReduce, bytes, bytes / n, 2 * (n - 1));
  if (algo != CollectiveAlgo::kTree) throw std::invalid_argument("all_reduce: algo must be ring or tree");
  CollectivePlan p{CollectiveKind::kAllReduce, n, bytes, {}, {}};
  if (n < 2) return p;
  std::vector<LinkId> scratch;
  FlowBatch b;
  for (int r = 1; r < n; ++r) {
    const int parent = (r - 1) / 2;
    add_flow(topo, b, group[r], group[parent], bytes, scratch);  // reduce
    add_flow(topo, b, group[parent], group[r], bytes, scratch);  // broadcast
  }
  p.add_phase(std::move(b));
  // Pipeline fill: a pipelined tree still pays one edge latency per extra level. Each extra
  // level is a zero-byte phase over one tree edge, which costs exactly that edge's latency.
  int depth = 0;
  for (int x = n - 1; x > 0; x = (x - 1) / 2) ++depth;
  for (int lvl = 1; lvl < depth; ++lvl) {
    FlowBatch lat;
    scratch.clear();
    topo.route(group[1], group[0], pair_key(group[1], group[0]), scratch);
    lat.add(scratch, 0.0);
    p.add_phase(std::move(lat));
  }
  return p;
}

CollectivePlan plan_all_gather(const Topology& topo, const std::vector<int>& group, double bytes) {
  check_group(topo, group);
  const int n = static_cast<int>(group.size());
  return ring_plan(topo, group, CollectiveKind::kAllGather, bytes, bytes / n, n - 1);
}

CollectivePlan plan_reduce_scatter(const Topology& topo, const std::vector<int>& group, double bytes) {
  check_group(topo, group);
  const int n = static_cast<int>(group.size());
  return ring_plan(topo, group, CollectiveKind::kReduceScatter, bytes, bytes / n, n - 1);
}

CollectivePlan plan_send_recv(const Topology& topo, int src, int dst, double bytes) {
  check_group(topo, {src, dst});
  CollectivePlan p{CollectiveKind::kSendRecv, 2, bytes, {}, {}};
  std::vector<LinkId> scratch;
  FlowBatch b;
  add_flow(topo, b, src, dst, bytes, scratch);
  p.add_phase(std::move(b));
  return p;
}

namespace {
void finish_result(CollectiveResult& r) {
  const double s = r.time.to_s();
  r.algbw = s > 0 ? r.size_bytes / s : 0;
  r.busbw = r.algbw * busbw_factor(r.kind, r.ranks);
}
void count_link_bytes(const FlowBatch& b, std::vector<double>& per_link) {
  for (std::size_t i = 0; i < b.size(); ++i)
    for (std::uint32_t k = b.offsets[i]; k < b.offsets[i + 1]; ++k) per_link[b.links[k]] += b.bytes[i];
}
}  // namespace

std::size_t CollectiveEngine::start(CollectivePlan plan, Done on_done) {
  plan.check();
  const std::size_t h = runs_.size();
  Run run;
  run.result.kind = plan.kind;
  run.result.ranks = plan.ranks;
  run.result.size_bytes = plan.size_bytes;
  run.result.start = sim_.now();
  run.result.phases = static_cast<int>(plan.phase_count());
  run.result.per_link_bytes.assign(topo_.link_count(), 0.0);
  for (std::size_t i = 0; i < plan.phases.size(); ++i)
    for (std::uint32_t k = 0; k < plan.repeat[i]; ++k) count_link_bytes(plan.phases[i], run.result.per_link_bytes);
  run.plan = std::move(plan);
  run.on_done = std::move(on_done);
  runs_.push_back(std::move(run));
  sim_.schedule_in(opts_.launch_overhead, [this, h] { launch_phase(h); });
  return h;
}

void CollectiveEngine::launch_phase(std::size_t h) {
  Run& run = runs_[h];
  if (run.next_phase == run.plan.phases.size()) {
    run.finished = true;
    run.result.time = sim_.now() - run.result.start;
    finish_result(run.result);
    run.plan.phases.clear();
    if (run.on_done) run.on_done(runs_[h].result);
    return;
  }
  FlowBatch batch = next_phase_run(run.plan.phases, run.plan.repeat, run.next_phase, run.repeats_done);
  const bool last = run.next_phase == run.plan.phases.size();
  net_.start(std::move(batch), [this, h, last] {
    if (last || opts_.step_overhead == sim::SimTime{})
      launch_phase(h);
    else
      sim_.schedule_in(opts_.step_overhead, [this, h] { launch_phase(h); });
  });
}

CollectiveResult analytical_collective(const Topology& topo, const CollectivePlan& plan, const CollectiveOptions& opts,
                                       bool per_link) {
  plan.check();
  CollectiveResult r;
  r.kind = plan.kind;
  r.ranks = plan.ranks;
  r.size_bytes = plan.size_bytes;
  r.phases = static_cast<int>(plan.phase_count());
  if (per_link) r.per_link_bytes.assign(topo.link_count(), 0.0);
  sim::SimTime total = opts.launch_overhead;
  // Per phase: the links it loads (sparse; a 4,096-rank ring phase touches ~10^4 of ~10^4..10^5
  // links) and their bytes, then the slowest link plus the longest path latency.
  std::vector<double> load(topo.link_count(), 0.0);
  std::vector<LinkId> touched;
  std::size_t runs_left = plan.phase_count();
  for (std::size_t p = 0; p < plan.phases.size(); ++p) {
    const FlowBatch& b = plan.phases[p];
    touched.clear();
    for (std::size_t i = 0; i < b.size(); ++i)
      for (std::uint32_t k = b.offsets[i]; k < b.offsets[i + 1]; ++k) {
        const LinkId l = b.links[k];
        if (load[l] == 0.0 && b.bytes[i] != 0.0) touched.push_back(l);
        load[l] += b.bytes[i];
      }
    sim::SimTime lat{};
    for (std::size_t i = 0; i < b.size(); ++i) {
      sim::SimTime l{};
      for (std::uint32_t k = b.offsets[i]; k < b.offsets[i + 1]; ++k) l += topo.link_latency(b.links[k]);
      lat = sim::max(lat, l);
    }
    sim::SimTime worst{};
    for (LinkId l : touched)
      if (load[l] > 0) worst = sim::max(worst, sim::duration_for(load[l], topo.link_bandwidth(l)));
    // The same phase `repeat` times: identical time each run, bytes added run by run.
    for (std::uint32_t rep = 0; rep < plan.repeat[p]; ++rep) {
      if (per_link)
        for (LinkId l : touched) r.per_link_bytes[l] += load[l];
      total += worst + lat;
      if (--runs_left > 0) total += opts.step_overhead;
    }
    for (LinkId l : touched) load[l] = 0.0;
  }
  r.time = total;
  finish_result(r);
  return r;
}

CollectiveResult run_collective(const Topology& topo, CollectivePlan plan, NetworkModel model,
                                const CollectiveOptions& opts) {
  if (model == NetworkModel::kAnalytical) return analytical_collective(topo, plan, opts);
  sim::Simulation sim;
  FlowNetwork net(sim);
  topo.install(net);
  CollectiveEngine eng(sim, topo, net, opts);
  const std::size_t h = eng.start(std::move(plan));
  sim.run();
  sim.check_drained();
  if (!eng.finished(h)) throw std::logic_error("run_collective: collective did not finish");
  return eng.result(h);
}

}  // namespace moesim::hw
