#include "hardware/topology.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <ostream>
#include <stdexcept>

#include "hardware/flow_network.hpp"

namespace moesim::hw {

namespace {
std::uint64_t mix64(std::uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

std::string bw_label(double bps) {
  if (bps >= 1e12) return fmt::format("{:g} TB/s", bps / 1e12);
  if (bps >= 1e9) return fmt::format("{:g} GB/s", bps / 1e9);
  return fmt::format("{:g} MB/s", bps / 1e6);
}
}  // namespace

int Topology::add_vertex(VertexKind kind, std::string name, int node) {
  return static_cast<int>(boost::add_vertex(VertexInfo{kind, std::move(name), node}, g_));
}

LinkId Topology::add_link(int from, int to, double bandwidth, sim::SimTime latency) {
  if (!(bandwidth > 0) || !std::isfinite(bandwidth))
    throw std::invalid_argument(fmt::format("link {} -> {}: bandwidth must be > 0", g_[from].name, g_[to].name));
  const auto id = static_cast<LinkId>(link_src_.size());
  boost::add_edge(static_cast<std::size_t>(from), static_cast<std::size_t>(to), EdgeInfo{id, bandwidth, latency}, g_);
  link_src_.push_back(from);
  link_dst_.push_back(to);
  link_bw_.push_back(bandwidth);
  link_lat_.push_back(latency);
  dist_cache_.clear();
  dist_cache_bytes_ = 0;
  clear_route_cache();
  out_links_.clear();
  return id;
}

void Topology::add_duplex(int a, int b, double bandwidth, sim::SimTime latency_ab, sim::SimTime latency_ba) {
  add_link(a, b, bandwidth, latency_ab);
  add_link(b, a, bandwidth, latency_ba);
}

std::optional<int> Topology::find_vertex(const std::string& name) const {
  for (std::size_t v = 0; v < boost::num_vertices(g_); ++v)
    if (g_[v].name == name) return static_cast<int>(v);
  return std::nullopt;
}

std::string Topology::link_name(LinkId l) const {
  return g_[static_cast<std::size_t>(link_src_[l])].name + "->" + g_[static_cast<std::size_t>(link_dst_[l])].name;
}

void Topology::install(FlowNetwork& net) const {
  if (net.link_count() != 0) throw std::invalid_argument("Topology::install: the FlowNetwork already has links");
  for (std::size_t l = 0; l < link_src_.size(); ++l) net.add_link(link_bw_[l], link_lat_[l]);
}

void Topology::ensure_csr() const {
  const std::size_t nv = boost::num_vertices(g_);
  if (out_begin_.size() == nv + 1 && out_links_.size() == link_src_.size()) return;
  out_begin_.assign(nv + 1, 0);
  for (int s : link_src_) ++out_begin_[static_cast<std::size_t>(s) + 1];
  for (std::size_t v = 0; v < nv; ++v) out_begin_[v + 1] += out_begin_[v];
  out_links_.assign(link_src_.size(), 0);
  std::vector<std::uint32_t> fill(out_begin_.begin(), out_begin_.end() - 1);
  for (std::size_t l = 0; l < link_src_.size(); ++l)
    out_links_[fill[static_cast<std::size_t>(link_src_[l])]++] = static_cast<LinkId>(l);
  in_begin_.assign(nv + 1, 0);
  for (int t : link_dst_) ++in_begin_[static_cast<std::size_t>(t) + 1];
  for (std::size_t v = 0; v < nv; ++v) in_begin_[v + 1] += in_begin_[v];
  in_links_.assign(link_src_.size(), 0);
  fill.assign(in_begin_.begin(), in_begin_.end() - 1);
  for (std::size_t l = 0; l < link_src_.size(); ++l)
    in_links_[fill[static_cast<std::size_t>(link_dst_[l])]++] = static_cast<LinkId>(l);
  is_gpu_.assign(nv, 0);
  for (std::size_t v = 0; v < nv; ++v) is_gpu_[v] = g_[v].kind == VertexKind::kGpu ? 1 : 0;
  dist_cache_.clear();
  dist_cache_bytes_ = 0;
  clear_route_cache();
}

void Topology::bfs_to(int dst, std::vector<std::int16_t>& d) const {
  // Hop distances to `dst` over the reversed graph, never passing through another GPU:
  // breadth-first search over the in-edge CSR.
  d.assign(boost::num_vertices(g_), -1);
  d[static_cast<std::size_t>(dst)] = 0;
  bfs_queue_.clear();
  bfs_queue_.push_back(dst);
  for (std::size_t qi = 0; qi < bfs_queue_.size(); ++qi) {
    const auto v = static_cast<std::size_t>(bfs_queue_[qi]);
    if (is_gpu_[v] && static_cast<int>(v) != dst) continue;
    if (d[v] == INT16_MAX)
      throw std::runtime_error(fmt::format("a path to {} is longer than {} hops", g_[dst].name, INT16_MAX));
    for (std::uint32_t k = in_begin_[v]; k < in_begin_[v + 1]; ++k) {
      const auto u = static_cast<std::size_t>(link_src_[in_links_[k]]);
      if (d[u] >= 0 || (is_gpu_[u] && static_cast<int>(u) != dst)) continue;
      d[u] = static_cast<std::int16_t>(d[v] + 1);
      bfs_queue_.push_back(static_cast<int>(u));
    }
  }
}

const std::vector<std::int16_t>& Topology::dist_to(int dst) const {
  ensure_csr();
  if (dist_cache_.empty()) dist_cache_.resize(static_cast<std::size_t>(gpus_));
  auto& d = dist_cache_[static_cast<std::size_t>(dst)];
  if (!d.empty()) return d;
  // One vector of V hop counts per destination: at 2,048 GPUs that is ~9 KB each, at 131,072
  // GPUs ~600 KB, so the cache is bounded and simply emptied when full (the vectors are a pure
  // function of the graph, so results do not depend on what was evicted).
  const std::size_t bytes = boost::num_vertices(g_) * sizeof(std::int16_t);
  if (dist_cache_bytes_ + bytes > kDistCacheBytes) {
    for (auto& v : dist_cache_) std::vector<std::int16_t>().swap(v);
    dist_cache_bytes_ = 0;
  }
  bfs_to(dst, d);
  dist_cache_bytes_ += bytes;
  return d;
}

void Topology::clear_route_cache() const {
  route_slots_.clear();
  route_entries_.clear();
  route_pool_.clear();
}

void Topology::route(int src, int dst, std::uint64_t flow_key, std::vector<LinkId>& out) const {
  if (src == dst) return;
  // Routes are a pure function of (graph, src, dst, flow_key): remember them per pair in an
  // open-addressing table (a 2,048-GPU DeepSeek-V3 step asks for the same ~10^5 pairs millions of
  // times; computing each costs a walk over the destination's distance vector).
  const std::uint64_t key =
      (static_cast<std::uint64_t>(static_cast<std::uint32_t>(src)) << 32) | static_cast<std::uint32_t>(dst);
  ensure_csr();
  if (!route_slots_.empty()) {
    const std::size_t mask = route_slots_.size() - 1;
    for (std::size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
      const std::uint32_t e = route_slots_[i];
      if (e == kNoRoute) break;
      const RouteEntry& r = route_entries_[e];
      if (r.key == key) {
        if (r.flow_key != flow_key) break;  // another ECMP choice of the same pair: compute it
        out.insert(out.end(), route_pool_.begin() + r.offset, route_pool_.begin() + r.offset + r.length);
        return;
      }
    }
  }
  const std::size_t before = out.size();
  compute_route(src, dst, flow_key, out);
  if (route_pool_.size() + (out.size() - before) > kRouteCacheLinks) clear_route_cache();
  if (route_entries_.size() + 1 > route_slots_.size() / 2) {  // grow (and rehash) at half load
    const std::size_t cap = std::max<std::size_t>(1024, route_slots_.size() * 2);
    route_slots_.assign(cap, kNoRoute);
    for (std::uint32_t e = 0; e < route_entries_.size(); ++e)
      for (std::size_t i = mix64(route_entries_[e].key) & (cap - 1);; i = (i + 1) & (cap - 1))
        if (route_slots_[i] == kNoRoute) {
          route_slots_[i] = e;
          break;
        }
  }
  const std::size_t mask = route_slots_.size() - 1;
  for (std::size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
    std::uint32_t& slot = route_slots_[i];
    if (slot != kNoRoute && route_entries_[slot].key != key) continue;
    RouteEntry r{key, flow_key, static_cast<std::uint32_t>(route_pool_.size()),
                 static_cast<std::uint32_t>(out.size() - before)};
    route_pool_.insert(route_pool_.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
    if (slot == kNoRoute) {
      slot = static_cast<std::uint32_t>(route_entries_.size());
      route_entries_.push_back(r);
    } else {
      route_entries_[slot] = r;  // the pair's latest flow key replaces the older one
    }
    break;
  }
}

void Topology::compute_route(int src, int dst, std::uint64_t flow_key, std::vector<LinkId>& out) const {
  const auto& d = dist_to(dst);
  auto pick = [&](int u, std::int32_t want, std::uint32_t hop) -> LinkId {
    std::uint32_t n = 0;
    const std::uint32_t b = out_begin_[static_cast<std::size_t>(u)], e = out_begin_[static_cast<std::size_t>(u) + 1];
    for (std::uint32_t k = b; k < e; ++k)
      if (d[static_cast<std::size_t>(link_dst_[out_links_[k]])] == want) ++n;
    if (n == 0) throw std::runtime_error(fmt::format("no route from {} to {}", g_[src].name, g_[dst].name));
    std::uint32_t choice = n == 1 ? 0 : static_cast<std::uint32_t>(mix64(flow_key ^ (0x51ED27ULL * (hop + 1))) % n);
    for (std::uint32_t k = b; k < e; ++k)
      if (d[static_cast<std::size_t>(link_dst_[out_links_[k]])] == want && choice-- == 0) return out_links_[k];
    return 0;  // unreachable
  };
  // The source is a GPU (not expanded by the search): its distance is 1 + its best neighbour's.
  std::int32_t best = -1;
  for (std::uint32_t k = out_begin_[static_cast<std::size_t>(src)]; k < out_begin_[static_cast<std::size_t>(src) + 1];
       ++k) {
    const std::int32_t dv = d[static_cast<std::size_t>(link_dst_[out_links_[k]])];
    if (dv >= 0 && (best < 0 || dv < best)) best = dv;
  }
  if (best < 0) throw std::runtime_error(fmt::format("no route from {} to {}", g_[src].name, g_[dst].name));
  int u = src;
  std::uint32_t hop = 0;
  for (std::int32_t want = best; want >= 0; --want, ++hop) {
    const LinkId l = pick(u, want, hop);
    out.push_back(l);
    u = link_dst_[l];
  }
}

std::string Topology::unreachable(std::size_t src, std::size_t dst) const {
  return fmt::format("{} cannot reach {}: the topology does not connect every GPU", g_[src].name, g_[dst].name);
}

std::optional<std::string> Topology::connectivity_problem_exhaustive() const {
  ensure_csr();
  std::vector<std::int16_t> d;
  for (int dst = 0; dst < gpus_; ++dst) {
    bfs_to(dst, d);
    for (int src = 0; src < gpus_; ++src) {
      if (src == dst) continue;
      bool ok = false;
      for (std::uint32_t k = out_begin_[static_cast<std::size_t>(src)];
           k < out_begin_[static_cast<std::size_t>(src) + 1] && !ok; ++k)
        ok = d[static_cast<std::size_t>(link_dst_[out_links_[k]])] >= 0;
      if (!ok) return unreachable(static_cast<std::size_t>(src), static_cast<std::size_t>(dst));
    }
  }
  return std::nullopt;
}

std::optional<std::string> Topology::connectivity_problem() const {
  // A GPU reaches another when a path runs from one to the other through switches and NICs only
  // (routes never pass through a third GPU), or over a direct link. Checking that with one search
  // per destination costs O(GPUs x vertices) time, and caching those searches O(GPUs x vertices)
  // memory (150 GB at 2^17 GPUs). Instead: strongly connected components of the non-GPU
  // subgraph (iterative Tarjan), the set of components each component reaches (bitsets over the
  // condensation, which Tarjan emits sinks first), then one check per distinct pair of
  // (components a source reaches, components feeding a destination). Real fabrics have one
  // component; explicit topologies may have a few.
  ensure_csr();
  const std::size_t nv = boost::num_vertices(g_);
  const auto G = static_cast<std::size_t>(gpus_);
  if (G < 2) return std::nullopt;
  auto direct = [&](std::size_t src, std::size_t dst) {
    for (std::uint32_t k = out_begin_[src]; k < out_begin_[src + 1]; ++k)
      if (static_cast<std::size_t>(link_dst_[out_links_[k]]) == dst) return true;
    return false;
  };

  // Tarjan over vertices that are not GPUs, edges between such vertices only.
  constexpr std::int32_t kNone = -1;
  std::vector<std::int32_t> index(nv, kNone), low(nv, 0), comp(nv, kNone);
  std::vector<std::uint8_t> on_stack(nv, 0);
  std::vector<std::int32_t> stack;
  std::vector<std::pair<std::int32_t, std::uint32_t>> call;  // (vertex, next out-edge slot)
  std::int32_t next_index = 0, ncomp = 0;
  for (std::size_t root = 0; root < nv; ++root) {
    if (is_gpu_[root] || index[root] != kNone) continue;
    call.emplace_back(static_cast<std::int32_t>(root), out_begin_[root]);
    index[root] = low[root] = next_index++;
    stack.push_back(static_cast<std::int32_t>(root));
    on_stack[root] = 1;
    while (!call.empty()) {
      auto& [v, k] = call.back();
      const auto vu = static_cast<std::size_t>(v);
      if (k < out_begin_[vu + 1]) {
        const auto w = static_cast<std::size_t>(link_dst_[out_links_[k++]]);
        if (is_gpu_[w]) continue;
        if (index[w] == kNone) {
          index[w] = low[w] = next_index++;
          stack.push_back(static_cast<std::int32_t>(w));
          on_stack[w] = 1;
          call.emplace_back(static_cast<std::int32_t>(w), out_begin_[w]);
        } else if (on_stack[w]) {
          low[vu] = std::min(low[vu], index[w]);
        }
        continue;
      }
      if (low[vu] == index[vu]) {
        std::int32_t w;
        do {
          w = stack.back();
          stack.pop_back();
          on_stack[static_cast<std::size_t>(w)] = 0;
          comp[static_cast<std::size_t>(w)] = ncomp;
        } while (w != v);
        ++ncomp;
      }
      const std::int32_t done_low = low[vu];
      call.pop_back();
      if (!call.empty()) {
        const auto parent = static_cast<std::size_t>(call.back().first);
        low[parent] = std::min(low[parent], done_low);
      }
    }
  }

  const auto C = static_cast<std::size_t>(ncomp);
  // Fast path, taken by every generated fabric: a component with a link into every GPU that every
  // GPU's out-links reach connects every ordered pair. (A fat tree has one component per node's
  // NVSwitch plus the switched fabric: the general check below is cubic in the node count, 414 s
  // at 16,384 nodes; this one is linear.)
  {
    std::vector<std::int32_t> common;  // components with a link into every GPU so far (sorted)
    std::vector<std::int32_t> here;
    for (std::size_t g = 0; g < G; ++g) {
      here.clear();
      for (std::uint32_t k = in_begin_[g]; k < in_begin_[g + 1]; ++k) {
        const auto u = static_cast<std::size_t>(link_src_[in_links_[k]]);
        if (!is_gpu_[u]) here.push_back(comp[u]);
      }
      std::sort(here.begin(), here.end());
      here.erase(std::unique(here.begin(), here.end()), here.end());
      if (g == 0) {
        common = here;
      } else {
        std::vector<std::int32_t> both;
        std::set_intersection(common.begin(), common.end(), here.begin(), here.end(), std::back_inserter(both));
        common.swap(both);
      }
      if (common.empty()) break;
    }
    std::vector<std::uint8_t> reaches(nv, 0);
    std::vector<std::size_t> queue;
    for (std::size_t t = 0; t < common.size() && t < 4; ++t) {
      // Every non-GPU vertex that reaches component common[t] (reverse search from its vertices).
      std::fill(reaches.begin(), reaches.end(), 0);
      queue.clear();
      for (std::size_t v = 0; v < nv; ++v)
        if (!is_gpu_[v] && comp[v] == common[t]) {
          reaches[v] = 1;
          queue.push_back(v);
        }
      for (std::size_t q = 0; q < queue.size(); ++q) {
        const std::size_t w = queue[q];
        for (std::uint32_t k = in_begin_[w]; k < in_begin_[w + 1]; ++k) {
          const auto u = static_cast<std::size_t>(link_src_[in_links_[k]]);
          if (is_gpu_[u] || reaches[u]) continue;
          reaches[u] = 1;
          queue.push_back(u);
        }
      }
      bool all = true;
      for (std::size_t g = 0; g < G && all; ++g) {
        bool any = false;
        for (std::uint32_t k = out_begin_[g]; k < out_begin_[g + 1] && !any; ++k)
          any = reaches[static_cast<std::size_t>(link_dst_[out_links_[k]])] != 0;
        all = any;
      }
      if (all) return std::nullopt;
    }
  }
  const std::size_t words = (C + 63) / 64;
  if (C > 16384) return connectivity_problem_exhaustive();  // pathological explicit graph
  // reach[c]: components reachable from component c (itself included). Tarjan numbers a
  // component after every component it reaches, so ascending order has successors done.
  std::vector<std::uint64_t> reach(C * words, 0);
  for (std::size_t v = 0; v < nv; ++v)
    if (!is_gpu_[v]) {
      const auto c = static_cast<std::size_t>(comp[v]);
      reach[c * words + c / 64] |= std::uint64_t{1} << (c % 64);
    }
  {
    std::vector<std::vector<std::size_t>> members(C);
    for (std::size_t v = 0; v < nv; ++v)
      if (!is_gpu_[v]) members[static_cast<std::size_t>(comp[v])].push_back(v);
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t v : members[c])
        for (std::uint32_t k = out_begin_[v]; k < out_begin_[v + 1]; ++k) {
          const auto w = static_cast<std::size_t>(link_dst_[out_links_[k]]);
          if (is_gpu_[w]) continue;
          const auto cw = static_cast<std::size_t>(comp[w]);
          if (cw == c) continue;
          for (std::size_t i = 0; i < words; ++i) reach[c * words + i] |= reach[cw * words + i];
        }
  }
  // Per GPU: the components its out-links reach (as a source) and the components with a link
  // into it (as a destination), both deduplicated into classes.
  std::map<std::vector<std::uint64_t>, std::size_t> src_ids, dst_ids;
  std::vector<std::size_t> src_class(G), dst_class(G);
  std::vector<std::vector<std::uint64_t>> src_sets, dst_sets;
  std::vector<std::vector<std::size_t>> src_members;
  std::vector<std::uint64_t> bits(words);
  for (std::size_t g = 0; g < G; ++g) {
    std::fill(bits.begin(), bits.end(), 0);
    for (std::uint32_t k = out_begin_[g]; k < out_begin_[g + 1]; ++k) {
      const auto w = static_cast<std::size_t>(link_dst_[out_links_[k]]);
      if (is_gpu_[w]) continue;
      const auto c = static_cast<std::size_t>(comp[w]);
      for (std::size_t i = 0; i < words; ++i) bits[i] |= reach[c * words + i];
    }
    auto [it, fresh] = src_ids.emplace(bits, src_sets.size());
    if (fresh) {
      src_sets.push_back(bits);
      src_members.emplace_back();
    }
    src_class[g] = it->second;
    src_members[it->second].push_back(g);
    std::fill(bits.begin(), bits.end(), 0);
    for (std::uint32_t k = in_begin_[g]; k < in_begin_[g + 1]; ++k) {
      const auto u = static_cast<std::size_t>(link_src_[in_links_[k]]);
      if (is_gpu_[u]) continue;
      const auto c = static_cast<std::size_t>(comp[u]);
      bits[c / 64] |= std::uint64_t{1} << (c % 64);
    }
    auto [jt, dfresh] = dst_ids.emplace(bits, dst_sets.size());
    if (dfresh) dst_sets.push_back(bits);
    dst_class[g] = jt->second;
  }
  // ok[s][d]: every source of class s reaches every destination of class d through the fabric.
  const std::size_t S = src_sets.size(), D = dst_sets.size();
  std::vector<std::uint8_t> ok(S * D, 0);
  for (std::size_t a = 0; a < S; ++a)
    for (std::size_t b = 0; b < D; ++b)
      for (std::size_t i = 0; i < words && !ok[a * D + b]; ++i) ok[a * D + b] = (src_sets[a][i] & dst_sets[b][i]) != 0;
  // The first failing pair in (destination, source) order, for a stable message; a failing class
  // pair still connects a member pair with a direct link.
  for (std::size_t dst = 0; dst < G; ++dst)
    for (std::size_t a = 0; a < S; ++a) {
      if (ok[a * D + dst_class[dst]]) continue;
      for (std::size_t src : src_members[a])
        if (src != dst && !direct(src, dst)) {
          // src_members are ascending; a smaller failing source may sit in a later class.
          std::size_t best = src;
          for (std::size_t a2 = a + 1; a2 < S; ++a2) {
            if (ok[a2 * D + dst_class[dst]]) continue;
            for (std::size_t s2 : src_members[a2]) {
              if (s2 >= best) break;
              if (s2 != dst && !direct(s2, dst)) best = s2;
            }
          }
          return unreachable(best, dst);
        }
    }
  return std::nullopt;
}

void Topology::write_dot(std::ostream& os) const {
  os << "digraph moesim_topology {\n  rankdir=BT;\n  node [fontsize=10];\n";
  std::map<int, std::vector<std::size_t>> by_node;
  std::vector<std::size_t> global;
  for (std::size_t v = 0; v < boost::num_vertices(g_); ++v) {
    if (g_[v].node >= 0)
      by_node[g_[v].node].push_back(v);
    else
      global.push_back(v);
  }
  auto vertex = [&](std::size_t v, const char* indent) {
    const char* shape = g_[v].kind == VertexKind::kGpu ? "box" : g_[v].kind == VertexKind::kNic ? "ellipse" : "diamond";
    os << fmt::format("{}v{} [label=\"{}\", shape={}];\n", indent, v, g_[v].name, shape);
  };
  for (const auto& [n, vs] : by_node) {
    os << fmt::format("  subgraph cluster_node{} {{\n    label=\"node {}\";\n", n, n);
    for (auto v : vs) vertex(v, "    ");
    os << "  }\n";
  }
  for (auto v : global) vertex(v, "  ");
  for (std::size_t l = 0; l < link_src_.size(); ++l)
    os << fmt::format("  v{} -> v{} [label=\"{}\"];\n", link_src_[l], link_dst_[l], bw_label(link_bw_[l]));
  os << "}\n";
}

Topology build_topology(const ClusterSpec& s) {
  if (s.nodes < 1 || s.gpus_per_node < 1)
    throw std::invalid_argument("build_topology: nodes and gpus_per_node must be >= 1");
  Topology t;
  t.gpus_ = s.total_gpus();
  t.gpus_per_node_ = s.gpus_per_node;
  const int gpn = s.gpus_per_node;
  const int dom = s.domain_size();
  if (dom < gpn || dom % gpn != 0 || t.gpus_ % dom != 0)
    throw std::invalid_argument("build_topology: domain_gpus must be a multiple of gpus_per_node dividing the cluster");
  if (dom != gpn && s.intra.fabric != IntraFabric::kNvswitch)
    throw std::invalid_argument("build_topology: a scale-up domain larger than a node needs the nvswitch fabric");
  t.domain_gpus_ = dom;
  for (int g = 0; g < t.gpus_; ++g) t.add_vertex(VertexKind::kGpu, fmt::format("gpu{}", g), g / gpn);

  // Inside each node.
  if ((gpn > 1 || dom > 1) && s.intra.fabric != IntraFabric::kNone) {
    const double bw = s.intra.bandwidth * s.intra.efficiency;
    for (int n = 0; n < s.nodes; ++n) {
      const int g0 = n * gpn;
      if (s.intra.fabric == IntraFabric::kNvlinkMesh) {
        // Every GPU pair has a direct link; a GPU's bandwidth is split over its gpn-1 peers.
        for (int i = 0; i < gpn; ++i)
          for (int j = i + 1; j < gpn; ++j)
            t.add_duplex(g0 + i, g0 + j, bw / (gpn - 1), s.intra.latency, s.intra.latency);
      } else if (dom != gpn) {
        // A scale-up domain of several nodes: one NVSwitch fabric for all its GPUs (built once,
        // at the domain's first node), non-blocking like the node switch of an HGX board.
        if (n % (dom / gpn) == 0) {
          const int d = n / (dom / gpn);
          const int sw = t.add_vertex(VertexKind::kSwitch, fmt::format("domain{}.nvswitch", d), -1);
          for (int i = 0; i < dom; ++i) t.add_duplex(d * dom + i, sw, bw, s.intra.latency, sim::SimTime{});
        }
      } else {
        const char* what = s.intra.fabric == IntraFabric::kNvswitch ? "nvswitch" : "pcie";
        const int sw = t.add_vertex(VertexKind::kSwitch, fmt::format("node{}.{}", n, what), n);
        for (int i = 0; i < gpn; ++i) t.add_duplex(g0 + i, sw, bw, s.intra.latency, sim::SimTime{});
      }
    }
  }

  // Between nodes.
  if (s.inter.fabric == InterFabric::kExplicit) {
    std::map<std::string, int> names;
    for (int g = 0; g < t.gpus_; ++g) names[fmt::format("gpu{}", g)] = g;
    for (const auto& sw : s.explicit_switches) names[sw] = t.add_vertex(VertexKind::kSwitch, sw, -1);
    for (const auto& l : s.explicit_links) {
      auto a = names.find(l.from), b = names.find(l.to);
      if (a == names.end() || b == names.end())
        throw std::invalid_argument(fmt::format("explicit link {} -> {}: unknown vertex", l.from, l.to));
      t.add_link(a->second, b->second, l.bandwidth, l.latency);
      if (l.duplex) t.add_link(b->second, a->second, l.bandwidth, l.latency);
    }
  } else if ((s.nodes > 1 || s.intra.fabric == IntraFabric::kNone) && s.inter.nic_tier) {
    // One node without intra-node links still has its NICs (pure-RDMA runs: DeepEP low-latency
    // with NVSHMEM P2P disabled sends to same-node peers through the NIC and the leaf switch).
    const int nics = s.inter.nics_per_node;
    if (nics < 1 || nics > gpn)
      throw std::invalid_argument("build_topology: nics_per_node must be in 1..gpus_per_node");
    const double pcie = s.inter.pcie_bandwidth > 0 ? s.inter.pcie_bandwidth : s.gpu.pcie_bandwidth;
    const double nic_bw = s.inter.nic_bandwidth * s.inter.efficiency;
    std::vector<std::vector<int>> nic(static_cast<std::size_t>(s.nodes));  // [node][k]
    for (int n = 0; n < s.nodes; ++n)
      for (int k = 0; k < nics; ++k)
        nic[static_cast<std::size_t>(n)].push_back(
            t.add_vertex(VertexKind::kNic, fmt::format("node{}.nic{}", n, k), n));
    for (int g = 0; g < t.gpus_; ++g)
      t.add_duplex(g, nic[static_cast<std::size_t>(g / gpn)][static_cast<std::size_t>((g % gpn) * nics / gpn)], pcie,
                   sim::SimTime{}, sim::SimTime{});
    auto attach = [&](int n_vertex, int sw) { t.add_duplex(n_vertex, sw, nic_bw, s.inter.latency, sim::SimTime{}); };
    if (s.inter.fabric == InterFabric::kSingleSwitch) {
      const int sw = t.add_vertex(VertexKind::kSwitch, "switch", -1);
      for (auto& node_nics : nic)
        for (int v : node_nics) attach(v, sw);
    } else {
      const int D = s.inter.leaf_down_ports;
      if (D < 1) throw std::invalid_argument("build_topology: leaf_down_ports must be >= 1");
      std::vector<std::vector<int>> groups;  // NIC vertices per leaf
      if (s.inter.fabric == InterFabric::kRailFatTree) {
        for (int k = 0; k < nics; ++k)
          for (int n = 0; n < s.nodes; ++n) {
            if (n % D == 0) groups.emplace_back();
            groups.back().push_back(nic[static_cast<std::size_t>(n)][static_cast<std::size_t>(k)]);
          }
      } else {
        int c = 0;
        for (int n = 0; n < s.nodes; ++n)
          for (int k = 0; k < nics; ++k, ++c) {
            if (c % D == 0) groups.emplace_back();
            groups.back().push_back(nic[static_cast<std::size_t>(n)][static_cast<std::size_t>(k)]);
          }
      }
      std::vector<int> leaves;
      for (std::size_t i = 0; i < groups.size(); ++i) {
        const int leaf = t.add_vertex(VertexKind::kSwitch, fmt::format("leaf{}", i), -1);
        leaves.push_back(leaf);
        for (int v : groups[i]) attach(v, leaf);
      }
      if (leaves.size() > 1) {
        const double over = s.inter.oversubscription;
        const int S = s.inter.spines > 0 ? s.inter.spines : std::max(1, static_cast<int>(std::ceil(D / over)));
        // Every leaf links to every spine; a spine radix in the tens of thousands is not a
        // buildable switch, and the graph would not fit in memory.
        if (static_cast<double>(leaves.size()) * S > 4194304.0)
          throw std::invalid_argument(fmt::format(
              "inter_node: {} leaves x {} spines = {} leaf-spine links, more than the 4194304 a two-tier fat tree "
              "may have here (raise leaf_down_ports or lower spines)",
              leaves.size(), S, static_cast<double>(leaves.size()) * S));
        const double up = D * nic_bw / (over * S);
        std::vector<int> spines;
        for (int i = 0; i < S; ++i) spines.push_back(t.add_vertex(VertexKind::kSwitch, fmt::format("spine{}", i), -1));
        for (int leaf : leaves)
          for (int sp : spines) t.add_duplex(leaf, sp, up, sim::SimTime{}, sim::SimTime{});
      }
    }
  }
  return t;
}

void describe_fabrics(std::ostream& os) {
  os << R"(Intra-node fabrics (cluster.intra_node.fabric; keys: bandwidth per GPU per direction [the GPU's
NVLink figure, PCIe for pcie], latency [1us], efficiency [0.8 for NVLink, 1.0 for pcie]):
  nvswitch      every GPU has one duplex link to a node switch at `bandwidth` (H100/H200/B200 HGX)
  nvlink-mesh   a direct duplex link between every GPU pair, `bandwidth` split over the gpus_per_node-1
                peers (e.g. 4-GPU NVLink boards)
  pcie          like nvswitch, through a PCIe switch at the GPU's PCIe rate
  none          no intra-node links: GPUs of one node talk through their NICs (declare inter_node,
                also for one node: DeepEP low-latency with NVSHMEM P2P disabled)
Scale-up domains (cluster.intra_node.domain_gpus [gpus_per_node], nvswitch only): domain_gpus /
gpus_per_node consecutive nodes share one NVSwitch fabric at `bandwidth` (GB200/GB300 NVL72:
gpus_per_node 4, domain_gpus 72); NICs stay per node and carry only traffic between domains.
domain_gpus must be a multiple of gpus_per_node and divide nodes x gpus_per_node. A cluster that
is a single domain needs no inter_node.

Inter-node fabrics (cluster.inter_node.fabric; required for nodes > 1 unless one domain holds every GPU):
  rail-fat-tree  rail-optimised two-level fat tree: NIC k of every node sits on the rail-k leaves
                 (leaf_down_ports NICs per leaf); leaves connect to every spine
  fat-tree       the same two-level tree with nodes' NICs packed onto leaves in order
  single-switch  every NIC on one non-blocking switch
  explicit       the graph in cluster.topology: {switches: [names], links: [{from, to, bandwidth,
                 latency, duplex}]}; vertices are gpu0..gpuN-1 and the declared switches
Keys (all but explicit): nic_bandwidth (required, e.g. 400Gb/s), nics_per_node [gpus_per_node; must
divide it; GPU i uses NIC i*nics/gpus_per_node], oversubscription [1: leaf down:up capacity],
leaf_down_ports [32], spines [0: ceil(leaf_down_ports / oversubscription)], pcie_bandwidth [the GPU's
PCIe rate, GPU<->NIC], latency [2us, NIC to NIC], efficiency [0.97 of nic_bandwidth: ~48.5 GB/s of
RDMA payload per 400 Gb/s port, see hardware/README.md].

Every link is directional with bandwidth x efficiency and a latency; routes are shortest paths with
deterministic ECMP (hash of the flow). `moesim run SCENARIO --dump-topology FILE.dot` draws the graph.
)";
}

}  // namespace moesim::hw
