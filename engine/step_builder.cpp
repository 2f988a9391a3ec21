#include "engine/step_builder.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <ctime>
#include <exception>
#include <optional>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "engine/pipeline.hpp"

namespace moesim::engine {

using sim::SimTime;

const char* to_string(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::kAllToAllV:
      return "all_to_allv";
    case CollectiveKind::kAllReduce:
      return "all_reduce";
    case CollectiveKind::kReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::kAllGather:
      return "all_gather";
    case CollectiveKind::kSendRecv:
      return "send_recv";
  }
  return "?";
}

double CollectiveRequest::at(int src, int dst) const {
  if (!matrix) return 0;
  const std::size_t G = gpus.size();
  const std::size_t i = transpose ? static_cast<std::size_t>(dst) * G + static_cast<std::size_t>(src)
                                  : static_cast<std::size_t>(src) * G + static_cast<std::size_t>(dst);
  return (*matrix)[i] * scale;
}

double CollectiveRequest::total_bytes() const {
  if (kind != CollectiveKind::kAllToAllV || !matrix) return bytes;
  double t = 0;
  for (double b : *matrix) t += b;
  return t * scale;
}

namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// Routing outcome of one (MoE layer, micro-batch, EP group).
struct EpSlice {
  std::shared_ptr<const std::vector<double>> dispatch;  // [src * ep + dst]
  std::shared_ptr<const std::vector<double>> combine;   // [sender(expert rank) * ep + receiver]
  std::vector<std::vector<std::int64_t>> rows;          // [ep rank][local expert] rows computed
  std::vector<std::int64_t> kept_rows;                  // [ep rank] real rows computed (model FLOPs)
  std::vector<std::int64_t> sent_rows;                  // [ep rank] rows dispatched (permute size)
  // deepep_normal with comm_sms: the most bytes one rank sends + receives in each matrix (the
  // SM-bound floor of the kernel; 0 otherwise).
  double dispatch_sm_bytes = 0, combine_sm_bytes = 0;
};

class Builder {
 public:
  Builder(const Scenario& s, const ComputeCosts& c, const StepBuildOptions& o, BuiltStep& out)
      : s_(s), m_(s.model), c_(c), o_(o), out_(out), lay_(s.parallel), mb_(micro_batch_shape(s)) {
    if (o_.overlap_chunks < 1) throw std::invalid_argument("overlap_chunks must be >= 1");
    // These combinations are configuration errors found by parse_scenario (with the key and its
    // location); here they are internal assertions for scenarios built in code.
    if (m_.heads % lay_.tp != 0)
      throw std::invalid_argument(fmt::format("tp {} does not divide {} attention heads", lay_.tp, m_.heads));
    if (lay_.stage_size() % lay_.ep != 0)
      throw std::invalid_argument(fmt::format("ep {} does not divide dp x tp = {}", lay_.ep, lay_.stage_size()));
    if (m_.num_moe_layers() > 0) {
      if (m_.experts % lay_.ep != 0)
        throw std::invalid_argument(fmt::format("{} experts do not divide over ep {}", m_.experts, lay_.ep));
      if (s.routing.redundant_experts > 0)
        throw std::invalid_argument("the step builder does not support redundant (replicated) experts yet");
    }
    vranges_ = virtual_stage_ranges(pipeline_stage_layers(s.parallel, m_.num_layers()));
    vpp_ = s.parallel.vpp;
    if (vpp_ > 1 && !mb_.train) throw std::invalid_argument("vpp > 1 needs a training workload");
    stage_of_layer_.assign(static_cast<std::size_t>(m_.num_layers()), 0);
    for (std::size_t v = 0; v < vranges_.size(); ++v)
      for (int l = vranges_[v].first; l < vranges_[v].second; ++l)
        stage_of_layer_[static_cast<std::size_t>(l)] = static_cast<int>(v) % lay_.pp;
    out_.stage_layers = vranges_;
    out_.training = mb_.train;
    const int W = lay_.world();
    last_.assign(static_cast<std::size_t>(W), kNoOp);
    pending_.assign(static_cast<std::size_t>(W), {});
    reduce_ops_.assign(static_cast<std::size_t>(W), {});
    prefetch_anchor_.assign(static_cast<std::size_t>(W), kNoOp);
    gathered_.assign(static_cast<std::size_t>(m_.num_layers()) + 2, 0);
    out_.flops.per_gpu_executed.assign(static_cast<std::size_t>(W), 0.0);
    out_.compute_ops_per_gpu.assign(static_cast<std::size_t>(W), 0);
    placement_ = m_.num_moe_layers() > 0 ? models::place_contiguous(m_.experts, lay_.ep) : models::Placement{};
    if (o_.dispatcher == Dispatcher::kDeepepNormal && m_.num_moe_layers() > 0) {
      // EP group j of a stage is GPUs first..first+ep-1 with first a multiple of gpus_per_node
      // (or the group lies inside one node): the checks of parse_scenario.
      const int gpn = std::max(1, o_.gpus_per_node);
      const bool spans = lay_.ep > gpn;
      dest_map_.replicas = &placement_.replicas;
      dest_map_.nodes = spans ? lay_.ep / gpn : 1;
      for (int r = 0; r < lay_.ep; ++r) {
        dest_map_.node_of_rank.push_back(spans ? r / gpn : 0);
        local_of_rank_.push_back(spans ? r % gpn : r);
      }
    }
    gated_ = m_.is_gated() ? 2 : 1;
    tokens_ = mb_.tokens;
    moe_tokens_ = mb_.moe_tokens;
    fp8_gemms_ = s_.execution.weights_dtype == "fp8";
    fp8_train_ = mb_.train && fp8_gemms_;
    tbo_ = !mb_.train && s_.execution.two_batch_overlap;
    if (tbo_ && (o_.overlap_chunks != 1 || lay_.cp != 1 || mb_.tokens < 2))
      throw std::invalid_argument("two_batch_overlap needs overlap_chunks 1, cp 1 and at least two tokens per rank");
    bpe_ = m_.bytes_per_param;
  }

  void build() {
    reserve_graph();
    const double t0 = thread_cpu_seconds();
    route_all();
    const double t1 = thread_cpu_seconds();
    schedule();
    out_.host_route_s = t1 - t0;
    out_.host_graph_s = thread_cpu_seconds() - t1;
  }

 private:
  /// Reserves graph storage from an estimate of the op count (growing a multi-GB graph by
  /// doubling copies and re-faults it; capacity never touched costs no memory).
  void reserve_graph() {
    const std::size_t W = static_cast<std::size_t>(lay_.world()), M = static_cast<std::size_t>(mb_.micro_batches);
    std::vector<std::size_t> layers_of(static_cast<std::size_t>(lay_.pp), 0);
    for (int st : stage_of_layer_) ++layers_of[static_cast<std::size_t>(st)];
    const std::size_t per_stage = *std::max_element(layers_of.begin(), layers_of.end());
    // ops one GPU emits per micro-batch and layer in the forward pass (attention, router, permute,
    // shared experts, chunked expert GEMMs and all-to-alls, TP collectives); backward about twice
    // that; recomputation repeats the forward.
    const std::size_t fwd = 16 + 5 * static_cast<std::size_t>(o_.overlap_chunks);
    const std::size_t per_layer =
        mb_.train ? fwd * (s_.workload.recompute || s_.workload.recompute_modules != 0 ? 4 : 3) : fwd;
    const std::size_t ops = W * M * (per_stage * per_layer + 8);
    out_.graph.reserve(ops, ops * 2, ops + ops / 2);
  }

  // ---------------------------------------------------------------- routing
  void route_all() {
    const int M = mb_.micro_batches;
    const int S = lay_.stage_size();
    const int ep = lay_.ep;
    slices_.resize(static_cast<std::size_t>(m_.num_layers()));
    moe_index_.assign(static_cast<std::size_t>(m_.num_layers()), -1);
    models::RoutingSpec spec = s_.routing;
    std::optional<models::RoutingTrace> trace;
    if (spec.distribution == models::Distribution::kTrace)
      trace = models::load_routing_trace(spec.trace_file, m_, spec.top_k);
    const std::vector<int> moe_layers = m_.moe_layer_indices();
    // Layers are routed a chunk at a time and each turned into EP slices at once: a layer's raw
    // routing (five per-expert counts per routing group) is far larger than its slices, and
    // holding every layer's at once cost 1 GB at 2,048 GPUs. A chunk holds about 2M group-expert
    // entries (~80 MB) and at least one layer per thread; small steps route all layers in one go
    // (each call starts the threads again). The share caches live across chunks.
    const std::size_t threads =
        std::min<std::size_t>(static_cast<std::size_t>(std::max(1, o_.routing_threads)), moe_layers.size());
    std::vector<models::InclusionShareCache> caches(std::max<std::size_t>(threads, 1));
    const std::size_t per_layer =
        static_cast<std::size_t>(M) * static_cast<std::size_t>(S) * static_cast<std::size_t>(std::max(1, m_.experts));
    const std::size_t chunk =
        std::max<std::size_t>(std::max<std::size_t>(threads, 1), (std::size_t{1} << 21) / per_layer);
    for (std::size_t c0 = 0; c0 < moe_layers.size(); c0 += chunk) {
      const std::vector<int> part(
          moe_layers.begin() + static_cast<std::ptrdiff_t>(c0),
          moe_layers.begin() + static_cast<std::ptrdiff_t>(std::min(c0 + chunk, moe_layers.size())));
      std::vector<models::LayerRouting> routed = route_layers(spec, part, M * S, ep, trace ? &*trace : nullptr, caches);
      for (std::size_t li = 0; li < part.size(); ++li) add_layer(part[li], std::move(routed[li]));
    }
  }

  /// Turns one MoE layer's routing into its report and its EP slices (dispatch/combine byte
  /// matrices and per-rank expert rows, per micro-batch and EP group).
  void add_layer(int l, models::LayerRouting lr) {
    const int M = mb_.micro_batches;
    const int S = lay_.stage_size();
    const int G = lay_.ep_groups_per_stage();
    const int ep = lay_.ep;
    const models::RoutingSpec& spec = s_.routing;
    {
      MoeLayerReport rep;
      rep.layer = l;
      rep.stage = stage_of(l);
      rep.stats = lr.stats;
      out_.routed += lr.stats.routed;
      out_.kept += lr.stats.kept;
      out_.dropped += lr.stats.dropped;
      out_.padded += lr.stats.padded;
      std::vector<std::int64_t> rank_rows(static_cast<std::size_t>(ep), 0);
      auto& per = slices_[static_cast<std::size_t>(l)];
      per.resize(static_cast<std::size_t>(M * G));
      models::ByteMatrixOptions bo;
      bo.hidden = m_.hidden;
      bo.dispatch = o_.dispatch_format;
      bo.combine = o_.combine_format;
      bo.pad_to_capacity = spec.pad_to_capacity;
      const std::size_t EPL = static_cast<std::size_t>(placement_.slots_per_rank);
      for (int mb = 0; mb < M; ++mb)
        for (int j = 0; j < G; ++j) {
          models::LayerRouting sub;
          sub.layer = l;
          for (int r = 0; r < ep; ++r)
            sub.groups.push_back(std::move(lr.groups[static_cast<std::size_t>(mb * S + j * ep + r)]));
          const models::DispatchMatrices dm =
              dest_map_.replicas != nullptr
                  ? models::build_deepep_normal_matrices(sub, placement_, bo, dest_map_.node_of_rank, local_of_rank_)
                  : models::build_dispatch_matrices(sub, placement_, bo);
          EpSlice sl;
          sl.dispatch = std::make_shared<const std::vector<double>>(dm.dispatch_bytes.begin(), dm.dispatch_bytes.end());
          sl.combine = std::make_shared<const std::vector<double>>(dm.combine_bytes.begin(), dm.combine_bytes.end());
          if (o_.dispatcher == Dispatcher::kDeepepNormal && o_.a2a_sm_count > 0) {
            sl.dispatch_sm_bytes = max_handled_bytes(*sl.dispatch, ep);
            sl.combine_sm_bytes = max_handled_bytes(*sl.combine, ep);
          }
          sl.rows.assign(static_cast<std::size_t>(ep), std::vector<std::int64_t>(EPL, 0));
          sl.kept_rows.assign(static_cast<std::size_t>(ep), 0);
          sl.sent_rows.assign(static_cast<std::size_t>(ep), 0);
          for (int src = 0; src < ep; ++src) {
            const models::GroupRouting& g = sub.groups[static_cast<std::size_t>(src)];
            const bool pad = spec.pad_to_capacity && g.capacity != models::kDropless;
            for (int e = 0; e < m_.experts; ++e) {
              const std::int64_t kept = g.kept[static_cast<std::size_t>(e)];
              const std::int64_t rows = pad ? g.capacity : kept;
              const int dst = e / placement_.slots_per_rank;
              sl.rows[static_cast<std::size_t>(dst)][static_cast<std::size_t>(e % placement_.slots_per_rank)] += rows;
              sl.kept_rows[static_cast<std::size_t>(dst)] += kept;
              sl.sent_rows[static_cast<std::size_t>(src)] += rows;
              rank_rows[static_cast<std::size_t>(dst)] += rows;
            }
          }
          // Dropless: each local expert's rows, gathered from every source, are padded up to a
          // multiple of routing.block_size before the grouped GEMM (the block-aligned layout of
          // dropless kernels: MegaBlocks blocks, DeepGEMM's contiguous M alignment), so the
          // padding is executed (FLOPs and activation bytes) but is no useful work.
          if (!sub.groups.empty() && sub.groups.front().capacity == models::kDropless && spec.block_size > 1) {
            const std::int64_t b = spec.block_size;
            for (std::size_t dst = 0; dst < sl.rows.size(); ++dst)
              for (std::int64_t& r : sl.rows[dst]) {
                const std::int64_t padded = (r + b - 1) / b * b;
                rank_rows[dst] += padded - r;
                rep.rows_block_padded += padded - r;
                r = padded;
              }
          }
          per[static_cast<std::size_t>(mb * G + j)] = std::move(sl);
        }
      std::int64_t mx = 0, sum = 0;
      for (auto v : rank_rows) {
        mx = std::max(mx, v);
        sum += v;
      }
      rep.rank_max_over_mean = sum > 0 ? static_cast<double>(mx) * ep / static_cast<double>(sum) : 0.0;
      const bool padded = spec.pad_to_capacity && !lr.groups.empty() && lr.groups.front().capacity != models::kDropless;
      rep.rows_expected = rep.stats.kept + (padded ? rep.stats.padded : 0) + rep.rows_block_padded;
      moe_index_[static_cast<std::size_t>(l)] = static_cast<int>(out_.moe_layers.size());
      out_.moe_layers.push_back(std::move(rep));
    }
  }

  /// Routes `layers` (in order) on up to o_.routing_threads threads. Each layer's groups draw
  /// from their own named streams, and a share cache only avoids recomputing a pilot, so the
  /// results do not depend on the thread count or on which thread routed which layer. The first
  /// exception (in layer order) is rethrown.
  std::vector<models::LayerRouting> route_layers(const models::RoutingSpec& spec, const std::vector<int>& layers,
                                                 int groups, int ep, const models::RoutingTrace* trace,
                                                 std::vector<models::InclusionShareCache>& caches) const {
    std::vector<models::LayerRouting> out(layers.size());
    std::vector<std::exception_ptr> errors(layers.size());
    std::atomic<std::size_t> next{0};
    const auto worker = [&](std::size_t t) {
      models::InclusionShareCache& share_cache = caches[t];  // counts mode: one shape pilot per thread
      for (std::size_t i = next++; i < layers.size(); i = next++) {
        try {
          models::RouteRequest req;
          req.tokens_per_group = moe_tokens_;
          req.groups = groups;
          req.step = o_.step;
          req.seed = s_.seed;
          req.ep_ranks = ep;
          req.keep_assignments = false;
          req.share_cache = &share_cache;
          req.dest = dest_map_.replicas != nullptr ? &dest_map_ : nullptr;
          out[i] = models::route_layer(spec, layers[i], req, trace);
        } catch (...) {
          errors[i] = std::current_exception();
        }
      }
    };
    const std::size_t threads = std::min<std::size_t>(caches.size(), layers.size());
    if (threads <= 1) {
      worker(0);
    } else {
      std::vector<std::thread> pool;
      for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker, t);
      worker(0);
      for (auto& th : pool) th.join();
    }
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    return out;
  }

  int stage_of(int l) const { return stage_of_layer_[static_cast<std::size_t>(l)]; }
  /// Layers held by pipeline rank st (all its model chunks), in order.
  std::vector<int> stage_layer_list(int st) const {
    std::vector<int> v;
    for (int l = 0; l < m_.num_layers(); ++l)
      if (stage_of(l) == st) v.push_back(l);
    return v;
  }
  int virtual_stages() const { return static_cast<int>(vranges_.size()); }

  // ---------------------------------------------------------------- op helpers
  OpId comp(int g, const char* name, int layer, int mb, SimTime d, double flops, double bytes = 0) {
    OpInfo i;
    i.name = name;
    i.category = Category::kCompute;
    i.layer = layer;
    i.micro_batch = mb;
    i.flops = flops;
    i.bytes = bytes;
    i.host_cost = host_free_ ? SimTime::zero() : o_.host_op_cost;
    // The dispatchers need tokens per expert on the host (Megatron's alltoall dispatcher copies
    // the splits to the CPU; DeepEP's normal dispatch waits for the received counts): the host
    // waits for the router of every MoE layer forward.
    i.host_sync = std::string_view(name) == "router";
    auto& p = pending_[static_cast<std::size_t>(g)];
    const OpId id = out_.graph.compute(g, i, d, p);
    p.clear();
    last_[static_cast<std::size_t>(g)] = id;
    out_.flops.executed += flops;
    out_.flops.per_gpu_executed[static_cast<std::size_t>(g)] += flops;
    ++out_.compute_ops;
    ++out_.compute_ops_per_gpu[static_cast<std::size_t>(g)];
    out_.serial_compute += d;
    const std::size_t nid = out_.graph.name_id(id);
    if (nid >= kernels_.size()) kernels_.resize(nid + 1);
    KernelTotals& k = kernels_[nid];
    ++k.count;
    k.time += d;
    k.flops += flops;
    return id;
  }

  OpId coll(CollectiveRequest req, const char* name, Stream stream, const std::vector<OpId>& deps, int sms = 0,
            int ordered_gpus = -1) {
    OpInfo i;
    i.name = name;
    i.category = req.category;
    i.layer = req.layer;
    i.micro_batch = req.micro_batch;
    i.bytes = req.total_bytes();
    i.recv_lane = req.kind == CollectiveKind::kSendRecv && req.backward ? 1 : 0;
    i.host_cost = host_free_ ? SimTime::zero() : o_.host_op_cost;
    const auto index = static_cast<std::uint32_t>(out_.collectives.size());
    std::vector<OpId> d;
    for (OpId x : deps)
      if (x != kNoOp) d.push_back(x);
    const OpId id = out_.graph.collective(req.gpus, i, index, stream, d, sms, ordered_gpus);
    out_.collectives.push_back(std::move(req));
    ++out_.collective_ops;
    return id;
  }

  std::vector<OpId> lasts(const std::vector<int>& gpus) const {
    std::vector<OpId> d;
    for (int g : gpus) d.push_back(last_[static_cast<std::size_t>(g)]);
    return d;
  }

  /// Collective over `gpus` after each member's latest compute op; members' next compute waits.
  OpId blocking(CollectiveKind kind, const std::vector<int>& gpus, double bytes, const char* name, int layer, int mb,
                bool bwd, Stream stream, Category cat = Category::kOtherComm) {
    CollectiveRequest r;
    r.kind = kind;
    r.gpus = gpus;
    r.bytes = bytes;
    r.category = cat;
    r.layer = layer;
    r.micro_batch = mb;
    r.backward = bwd;
    const OpId id = coll(std::move(r), name, stream, lasts(gpus));
    for (int g : gpus) pending_[static_cast<std::size_t>(g)].push_back(id);
    return id;
  }

  std::vector<int> stage_gpus(int st) const {
    std::vector<int> v;
    for (int i = 0; i < lay_.stage_size(); ++i) v.push_back(lay_.global_of_local(st, i));
    return v;
  }
  std::vector<int> tp_group(int st, int d) const {
    std::vector<int> v;
    for (int t = 0; t < lay_.tp; ++t) v.push_back(lay_.global(st, d, t));
    return v;
  }
  std::vector<int> ep_group(int st, int j) const {
    std::vector<int> v;
    for (int r = 0; r < lay_.ep; ++r) v.push_back(lay_.global_of_local(st, j * lay_.ep + r));
    return v;
  }
  std::vector<int> dp_group(int st, int t) const {
    std::vector<int> v;
    for (int d = 0; d < lay_.dp; ++d) v.push_back(lay_.global(st, d, t));
    return v;
  }
  std::vector<int> edp_group(int st, int r) const {
    std::vector<int> v;
    for (int j = 0; j < lay_.ep_groups_per_stage(); ++j) v.push_back(lay_.global_of_local(st, j * lay_.ep + r));
    return v;
  }

  void tp_collective(int st, CollectiveKind kind, double bytes, const char* name, int layer, int mb, bool bwd) {
    if (lay_.tp <= 1) return;
    for (int d = 0; d < lay_.dp; ++d) blocking(kind, tp_group(st, d), bytes, name, layer, mb, bwd, Stream::kEpComm);
  }

  static SimTime scaled(SimTime t, int num, int den) { return SimTime::from_ps(t.ps() * num / den); }

  // ---------------------------------------------------------------- layer pieces
  struct Gemm {
    SimTime t{};
    double flops = 0;
  };
  /// What a MoE layer has in flight between its phases: dispatch ids [group][chunk], the
  /// expert outputs [group][rank][chunk] the combine waits for, the last combine [group].
  struct MoeInFlight {
    std::vector<std::vector<OpId>> disp;
    std::vector<std::vector<std::vector<OpId>>> fc2;
    std::vector<OpId> comb;
  };
  /// A linear layer's GEMM [M x K] * [K x N]. With FP8 GEMMs (execution.weights_dtype: fp8) its
  /// op also quantises the input it reads (fp8_cast: the activations forward, the output
  /// gradient for dgrad); wgrad (cast_input false) reuses the transposed FP8 copies those casts
  /// wrote.
  Gemm gemm(std::int64_t M, std::int64_t N, std::int64_t K, bool cast_input = true) const {
    const SimTime cast = cast_input ? fp8_cast(static_cast<double>(M) * static_cast<double>(K)) : SimTime::zero();
    return {c_.dense_gemm(M, N, K) + cast,
            2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K)};
  }
  /// FP8 GEMMs quantise every input once per use by a memory-bound pass that reads it in bf16
  /// and writes FP8: in training (Transformer Engine's recipes, tensor-wise or block-wise scales
  /// alike) row-wise and column-wise copies, 2 + 1 + 1 bytes per element (the column-wise copy
  /// feeds the weight gradient); in inference (W8A8 with per-token-group scales, DeepGEMM's
  /// input) one row-wise copy, 2 + 1 bytes. Zero when the GEMMs are bf16. Charged inside the
  /// GEMM's op: the runtime issues it in the same module call (no host cost of its own), often
  /// fused into the preceding norm or permute.
  SimTime fp8_cast(double elems) const {
    if (!fp8_gemms_ || elems <= 0) return SimTime::zero();
    return c_.elementwise((mb_.train ? 4.0 : 3.0) * elems);
  }

  /// Attention projections as one list of GEMMs [M, N, K, replicated] on one GPU. `replicated`
  /// (1) marks a GEMM every TP rank computes in full (MLA's q_a / kv_a down-projections, whose
  /// outputs every head needs): executed on each rank, but one GEMM of model work per TP group.
  std::vector<std::array<std::int64_t, 4>> qkv_gemms() const {
    const std::int64_t T = tokens_, h = m_.hidden, tp = lay_.tp;
    if (m_.attention == models::AttentionKind::kMla) {
      const auto& a = m_.mla;
      const std::int64_t qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
      std::vector<std::array<std::int64_t, 4>> v;
      if (a.q_lora_rank > 0) {
        v.push_back({T, a.q_lora_rank, h, 1});
        v.push_back({T, m_.heads * qk / tp, a.q_lora_rank, 0});
      } else {
        v.push_back({T, m_.heads * qk / tp, h, 0});
      }
      v.push_back({T, a.kv_lora_rank + a.qk_rope_head_dim, h, 1});
      v.push_back({T, std::int64_t{m_.heads} * (a.qk_nope_head_dim + a.v_head_dim) / tp, a.kv_lora_rank, 0});
      return v;
    }
    return {{T, (std::int64_t{m_.heads} + 2 * std::int64_t{m_.kv_heads}) * m_.head_dim / tp, h, 0}};
  }
  std::int64_t attn_out_dim() const {
    const std::int64_t v = m_.attention == models::AttentionKind::kMla ? m_.mla.v_head_dim : m_.head_dim;
    return std::int64_t{m_.heads} * v / lay_.tp;
  }
  AttentionShape attn_shape() const {
    AttentionShape a;
    a.batch = half_shape_ ? half_shape_->seqs : mb_.seqs;
    a.q_len = half_shape_ ? half_shape_->q : mb_.q_len;
    a.kv_len = half_shape_ ? half_shape_->kv : mb_.kv_len;
    a.heads = std::max<std::int64_t>(1, m_.heads / lay_.tp);
    a.causal = mb_.causal;
    a.context_shards = mb_.context_shards;
    a.bytes_per_elem = bpe_;
    if (m_.attention == models::AttentionKind::kMla) {
      a.qk_dim = m_.mla.qk_nope_head_dim + m_.mla.qk_rope_head_dim;
      a.v_dim = m_.mla.v_head_dim;
      a.kv_bytes_per_token = s_.workload.mode == WorkloadMode::kDecode
                                 ? (m_.mla.kv_lora_rank + m_.mla.qk_rope_head_dim) * bpe_
                                 : a.heads * (a.qk_dim + a.v_dim) * bpe_;
    } else {
      a.qk_dim = a.v_dim = m_.head_dim;
      const std::int64_t kvh = std::max<std::int64_t>(1, ceil_div(m_.kv_heads, lay_.tp));
      a.kv_bytes_per_token = 2 * kvh * m_.head_dim * bpe_;
    }
    return a;
  }

  // Memory-bound kernels between the GEMMs (HBM bytes read + written, activations in bf16; the
  // cost model's elementwise kernel prices them, with its per-kernel overhead):
  //   norm        residual add + RMSNorm on the sequence-parallel tokens T/tp: reads x and the
  //               residual, writes the sum and the normalised copy (4 rows); backward reads dy, x
  //               and the residual gradient, writes dx and the summed gradient (5 rows).
  //   rope        rotary embedding of q and k after the QKV projection: reads and writes the
  //               rotary part of q and k (MLA: the qk_rope_head_dim slice; else the whole head).
  //   *_act       the FFN activation between fc1 and fc2: SwiGLU reads 2F, writes F per row
  //               (backward reads dy and the two inputs, writes two gradients: 5F); GELU 2F / 3F.
  void norm_op(int g, int l, int mb, bool bwd) {
    const double b = (bwd ? 5.0 : 4.0) * static_cast<double>(moe_tokens_ * m_.hidden * bpe_);
    comp(g, bwd ? "norm.bwd" : "norm", l, mb, c_.elementwise(b), 0, b);
  }
  double rope_bytes() const {
    std::int64_t w = 0;
    if (m_.attention == models::AttentionKind::kMla)
      w = std::int64_t{m_.heads} * m_.mla.qk_rope_head_dim / lay_.tp + m_.mla.qk_rope_head_dim;
    else
      w = (std::int64_t{m_.heads} / lay_.tp + std::max<std::int64_t>(1, ceil_div(m_.kv_heads, lay_.tp))) * m_.head_dim;
    return 2.0 * static_cast<double>(tokens_ * w * bpe_);
  }
  void act_op(int g, const char* name, int l, int mb, std::int64_t rows, std::int64_t F, bool bwd) {
    if (rows <= 0 || F <= 0) return;
    const double per = gated_ == 2 ? (bwd ? 5.0 : 3.0) : (bwd ? 3.0 : 2.0);
    const double b = per * static_cast<double>(rows) * static_cast<double>(F * bpe_);
    comp(g, name, l, mb, c_.elementwise(b), 0, b);
  }

  // ---------------------------------------------------------------- attention, context parallelism
  /// Attention (forward, recomputed forward or backward) of micro-batch mb, layer l on every GPU
  /// of stage st: one kernel per GPU of time t. With cp > 1 it is ring attention (Megatron's
  /// cp_comm_type p2p, TE's fused attention with CP): each rank runs cp steps of t/cp, step 0 on
  /// its own K/V chunk and step s on the chunk that arrived from its ring predecessor; each step's
  /// send/recv (EP/TP stream, ordered on the sender only) forwards a chunk as soon as it arrived,
  /// so the transfer of step s+1 overlaps the compute of step s. Forward chunks carry K and V of
  /// the rank's tokens; backward chunks carry K, V and their gradients (twice the bytes), each
  /// sent once the step before it is computed, and a last transfer returns every chunk's dK, dV
  /// to its owner before the QKV backward. One host call per attention: the steps cost no host time.
  void attention_op(int st, int l, int mb, const char* name, SimTime t, double flops, double bytes, bool bwd) {
    const int cp = lay_.cp;
    if (cp == 1) {
      for (int g : stage_gpus(st)) comp(g, name, l, mb, t, flops, bytes);
      return;
    }
    const double kv_chunk = static_cast<double>(tokens_) * static_cast<double>(attn_shape().kv_bytes_per_token);
    const SimTime tc = scaled(t, 1, cp);
    const double fc = flops / cp, bc = bytes / cp;
    const auto ucp = static_cast<std::size_t>(cp);
    std::vector<int> ring(ucp);
    std::vector<OpId> ready(ucp), recv(ucp);
    for (int d = 0; d < lay_.dp / cp; ++d)
      for (int tpi = 0; tpi < lay_.tp; ++tpi) {
        for (int c = 0; c < cp; ++c) ring[static_cast<std::size_t>(c)] = lay_.global(st, d * cp + c, tpi);
        for (std::size_t c = 0; c < ucp; ++c) ready[c] = last_[static_cast<std::size_t>(ring[c])];
        for (std::size_t c = 0; c < ucp; ++c) comp(ring[c], name, l, mb, tc, fc, bc);
        host_free_ = true;
        for (int step = 1; step <= (bwd ? cp : cp - 1); ++step) {
          const double b = bwd && step < cp ? 2.0 * kv_chunk : kv_chunk;
          for (std::size_t c = 0; c < ucp; ++c) {
            const std::size_t to = (c + 1) % ucp;
            CollectiveRequest r;
            r.kind = CollectiveKind::kSendRecv;
            r.gpus = {ring[c], ring[to]};
            r.bytes = b;
            r.category = Category::kOtherComm;
            r.layer = l;
            r.micro_batch = mb;
            r.backward = bwd;
            std::vector<OpId> deps{ready[c]};
            if (bwd) deps.push_back(last_[static_cast<std::size_t>(ring[c])]);  // the gradient just computed
            recv[to] = coll(std::move(r), bwd ? "cp_ring_kv_dkv" : "cp_ring_kv", Stream::kEpComm, deps, 0, 1);
          }
          for (std::size_t c = 0; c < ucp; ++c) {
            pending_[static_cast<std::size_t>(ring[c])].push_back(recv[c]);
            if (step < cp) comp(ring[c], name, l, mb, tc, fc, bc);
          }
          ready = recv;
        }
        host_free_ = false;
      }
  }

  /// Selective recomputation before layer l's backward (workload.recompute_modules): re-runs the
  /// forward kernels of the listed modules (no model FLOPs). `moe` re-runs the whole MoE block,
  /// its dispatch and combine included.
  void recompute_selective(int st, int mb, int l) {
    const WorkloadSpec& w = s_.workload;
    const auto gpus = stage_gpus(st);
    const bool moe = m_.moe_layer[static_cast<std::size_t>(l)];
    for (int g : gpus) {
      if (w.recomputes(RecomputeModule::kLayernorm)) {
        norm_op(g, l, mb, false);
        norm_op(g, l, mb, false);
      }
      if (w.recomputes(RecomputeModule::kMlaUpProj) && m_.attention == models::AttentionKind::kMla) {
        SimTime t{};
        double f = 0;
        for (const auto& q : qkv_gemms())
          if (q[3] == 0) {
            const Gemm x = gemm(q[0], q[1], q[2]);
            t += x.t;
            f += x.flops;
          }
        comp(g, "qkv", l, mb, t, f);
        comp(g, "rope", l, mb, c_.elementwise(rope_bytes()), 0, rope_bytes());
      }
    }
    if (w.recomputes(RecomputeModule::kCoreAttn)) {
      const AttentionShape as = attn_shape();
      attention_op(st, l, mb, "attn", c_.attention(as), attention_flops(as), attention_bytes(as), false);
    }
    for (int g : gpus) {
      if (!moe && w.recomputes(RecomputeModule::kMlp)) {
        const std::int64_t F = m_.dense_ffn / lay_.tp;
        const Gemm f1 = gemm(tokens_, F * gated_, m_.hidden), f2 = gemm(tokens_, m_.hidden, F);
        comp(g, "ffn_fc1", l, mb, f1.t, f1.flops);
        act_op(g, "ffn_act", l, mb, tokens_, F, false);
        comp(g, "ffn_fc2", l, mb, f2.t, f2.flops);
      }
      if (moe && !w.recomputes(RecomputeModule::kMoe) && w.recomputes(RecomputeModule::kSharedExperts) &&
          m_.shared_experts > 0) {
        const std::int64_t Fs = m_.shared_expert_ffn * m_.shared_experts / lay_.tp;
        const Gemm s1 = gemm(tokens_, Fs * gated_, m_.hidden), s2 = gemm(tokens_, m_.hidden, Fs);
        comp(g, "shared_fc1", l, mb, s1.t, s1.flops);
        act_op(g, "shared_act", l, mb, tokens_, Fs, false);
        comp(g, "shared_fc2", l, mb, s2.t, s2.flops);
      }
    }
    if (!moe) return;
    if (w.recomputes(RecomputeModule::kMoe)) {
      moe_block(st, mb, l, 0.0);
      return;
    }
    if (w.recomputes(RecomputeModule::kMoeAct)) {
      const int G = lay_.ep_groups_per_stage();
      for (int j = 0; j < G; ++j) {
        const EpSlice& sl = slices_[static_cast<std::size_t>(l)][static_cast<std::size_t>(mb * G + j)];
        const auto grp = ep_group(st, j);
        for (int r = 0; r < lay_.ep; ++r)
          act_op(grp[static_cast<std::size_t>(r)], "expert_act", l, mb, sum(sl.rows[static_cast<std::size_t>(r)]),
                 m_.expert_ffn, false);
      }
    }
  }

  /// Forward (or recomputed forward) of one layer for micro-batch mb on every GPU of stage st.
  /// stop_before_moe: a MoE layer stops after attention (two-batch overlap emits its MoE
  /// phases itself); a dense layer runs whole either way.
  void forward_layer(int st, int mb, int l, bool recompute, bool stop_before_moe = false) {
    const auto gpus = stage_gpus(st);
    const double act_bytes = static_cast<double>(tokens_ * m_.hidden * bpe_);
    const double mult = mb_.train && !recompute ? 3.0 : (recompute ? 0.0 : 1.0);  // model FLOPs factor
    const auto model_flops = [&](double f) { out_.flops.model += mult * f; };
    // attention
    SimTime tq{};
    double fq = 0, fq_replicated = 0;
    for (const auto& g : qkv_gemms()) {
      const Gemm x = gemm(g[0], g[1], g[2]);
      tq += x.t;
      fq += x.flops;
      if (g[3] != 0) fq_replicated += x.flops;
    }
    const AttentionShape as = attn_shape();
    const SimTime ta = c_.attention(as);
    const double fa = attention_flops(as);
    const Gemm go = gemm(tokens_, m_.hidden, attn_out_dim());
    for (int g : gpus) {
      norm_op(g, l, mb, false);
      comp(g, "qkv", l, mb, tq, fq);
      comp(g, "rope", l, mb, c_.elementwise(rope_bytes()), 0, rope_bytes());
    }
    attention_op(st, l, mb, "attn", ta, fa, attention_bytes(as), false);
    for (int g : gpus) {
      comp(g, "o_proj", l, mb, go.t, go.flops);
      norm_op(g, l, mb, false);
    }
    // Model FLOPs are a property of the model: a replicated projection counts once per TP group.
    const double n_gpus = static_cast<double>(gpus.size());
    model_flops((fq - fq_replicated + fa + go.flops) * n_gpus + fq_replicated * n_gpus / static_cast<double>(lay_.tp));
    tp_collective(st, CollectiveKind::kAllReduce, act_bytes, "tp_allreduce", l, mb, false);
    if (!m_.moe_layer[static_cast<std::size_t>(l)]) {
      const std::int64_t F = m_.dense_ffn / lay_.tp;
      const Gemm f1 = gemm(tokens_, F * gated_, m_.hidden), f2 = gemm(tokens_, m_.hidden, F);
      for (int g : gpus) {
        comp(g, "ffn_fc1", l, mb, f1.t, f1.flops);
        act_op(g, "ffn_act", l, mb, tokens_, F, false);
        comp(g, "ffn_fc2", l, mb, f2.t, f2.flops);
      }
      model_flops((f1.flops + f2.flops) * static_cast<double>(gpus.size()));
      tp_collective(st, CollectiveKind::kAllReduce, act_bytes, "tp_allreduce", l, mb, false);
      return;
    }
    if (stop_before_moe) return;
    moe_block(st, mb, l, mult);
    tp_collective(st, CollectiveKind::kAllGather, act_bytes, "tp_allgather", l, mb, false);
  }

  // ---------------------------------------------------------------- two-batch overlap
  /// Switch the builder's token shape to half h of the batch (two-batch overlap): half the
  /// sequences, or with one sequence (prefill) its first and second half of the queries, the
  /// second attending to the whole prefix.
  void enter_half(int h) {
    half_ = h;
    HalfShape x{mb_.seqs, mb_.q_len, mb_.kv_len};
    if (mb_.seqs >= 2) {
      x.seqs = mb_.seqs / 2 + (h < mb_.seqs % 2 ? 1 : 0);
    } else {
      x.q = h == 0 ? (mb_.q_len + 1) / 2 : mb_.q_len / 2;
      x.kv = h == 0 ? x.q : mb_.kv_len;
    }
    half_shape_ = x;
    tokens_ = x.seqs * x.q;
    moe_tokens_ = tokens_ / lay_.tp;
  }
  void leave_half() {
    half_ = -1;
    half_shape_.reset();
    tokens_ = mb_.tokens;
    moe_tokens_ = mb_.moe_tokens;
  }
  void moe_tail(int st, int mb, int l, const MoeInFlight& f) {
    moe_post(st, mb, l, f);
    tp_collective(st, CollectiveKind::kAllGather, static_cast<double>(tokens_ * m_.hidden * bpe_), "tp_allgather", l,
                  mb, false);
  }
  /// The layers of virtual stage v for micro-batch mb as SGLang's / DeepSeek's two-batch overlap
  /// runs them: the batch in two halves, each half's dispatch and combine in flight while the
  /// other half computes. Per MoE layer l the compute stream runs attention(0) + dispatch(0)
  /// issued, unpermute(1) of layer l-1, attention(1) + dispatch(1), experts(0) + combine(0),
  /// experts(1) + combine(1), unpermute(0); half 1's unpermute of the last layer closes the stage.
  void forward_layers_tbo(int st, int mb, int v) {
    std::array<MoeInFlight, 2> f;
    int open1 = -1;  // layer whose half-1 unpermute is still to emit
    for (int l = vranges_[static_cast<std::size_t>(v)].first; l < vranges_[static_cast<std::size_t>(v)].second; ++l) {
      const bool moe = m_.moe_layer[static_cast<std::size_t>(l)];
      enter_half(0);
      forward_layer(st, mb, l, false, true);
      if (moe) moe_pre(st, mb, l, f[0]);
      enter_half(1);
      if (open1 >= 0) moe_tail(st, mb, open1, f[1]);
      open1 = -1;
      forward_layer(st, mb, l, false, true);
      if (moe) {
        moe_pre(st, mb, l, f[1]);
        enter_half(0);
        moe_experts(st, mb, l, 1.0, f[0]);
        enter_half(1);
        moe_experts(st, mb, l, 1.0, f[1]);
        enter_half(0);
        moe_tail(st, mb, l, f[0]);
        open1 = l;
      }
    }
    if (open1 >= 0) {
      enter_half(1);
      moe_tail(st, mb, open1, f[1]);
    }
    leave_half();
  }

  /// Rows of this pass: all of them, or half `half_` of them (two-batch overlap; the first half
  /// takes the odd row).
  std::int64_t part_rows(std::int64_t rows) const { return half_ < 0 ? rows : rows / 2 + (half_ < rows % 2 ? 1 : 0); }

  void moe_block(int st, int mb, int l, double mult) {
    MoeInFlight f;
    moe_pre(st, mb, l, f);
    moe_experts(st, mb, l, mult, f);
    moe_post(st, mb, l, f);
  }
  /// Router, permute and the dispatch all-to-all(s).
  void moe_pre(int st, int mb, int l, MoeInFlight& f) {
    const int ep = lay_.ep, G = lay_.ep_groups_per_stage(), c = o_.overlap_chunks;
    const std::int64_t h = m_.hidden;
    const std::int64_t rb = models::row_bytes(h, models::WireFormat::kBf16);
    const SimTime tr = c_.router_topk(moe_tokens_, h, m_.experts, m_.top_k);
    const double fr = 2.0 * static_cast<double>(moe_tokens_ * h) * m_.experts;
    f.disp.assign(static_cast<std::size_t>(G), std::vector<OpId>(static_cast<std::size_t>(c), kNoOp));
    for (int j = 0; j < G; ++j) {
      const EpSlice& sl = slices_[static_cast<std::size_t>(l)][static_cast<std::size_t>(mb * G + j)];
      const auto grp = ep_group(st, j);
      for (int r = 0; r < ep; ++r) {
        const int g = grp[static_cast<std::size_t>(r)];
        comp(g, "router", l, mb, tr, fr);
        const std::int64_t rows = part_rows(sl.sent_rows[static_cast<std::size_t>(r)]);
        comp(g, "permute", l, mb, c_.permute(rows, rb), 0, static_cast<double>(rows * rb));
      }
      for (int i = 0; i < c; ++i)
        f.disp[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)] =
            coll(a2a(grp, sl.dispatch, false, Category::kDispatch, l, mb, false, sl.dispatch_sm_bytes), "dispatch",
                 Stream::kEpComm, lasts(grp), o_.a2a_sm_count);
    }
  }
  /// Shared experts, the expert GEMMs (each chunk after its dispatch) and the combine(s).
  void moe_experts(int st, int mb, int l, double mult, MoeInFlight& f) {
    const int ep = lay_.ep, G = lay_.ep_groups_per_stage(), c = o_.overlap_chunks;
    const std::int64_t h = m_.hidden, F = m_.expert_ffn;
    const double fr = 2.0 * static_cast<double>(moe_tokens_ * h) * m_.experts;
    const std::int64_t Fs = m_.shared_expert_ffn * m_.shared_experts / lay_.tp;
    const Gemm s1 = gemm(tokens_, Fs * gated_, h), s2 = gemm(tokens_, h, Fs);
    f.fc2.assign(static_cast<std::size_t>(G), std::vector<std::vector<OpId>>(static_cast<std::size_t>(ep)));
    f.comb.assign(static_cast<std::size_t>(G), kNoOp);
    std::vector<std::int64_t> half_rows;
    for (int j = 0; j < G; ++j) {
      const EpSlice& sl = slices_[static_cast<std::size_t>(l)][static_cast<std::size_t>(mb * G + j)];
      const auto grp = ep_group(st, j);
      auto& fc2 = f.fc2[static_cast<std::size_t>(j)];
      for (int r = 0; r < ep; ++r) {
        const int g = grp[static_cast<std::size_t>(r)];
        if (m_.shared_experts > 0) {
          comp(g, "shared_fc1", l, mb, s1.t, s1.flops);
          act_op(g, "shared_act", l, mb, tokens_, Fs, false);
          comp(g, "shared_fc2", l, mb, s2.t, s2.flops);
          out_.flops.model += mult * (s1.flops + s2.flops);
        }
        const std::vector<std::int64_t>* rows = &sl.rows[static_cast<std::size_t>(r)];
        if (half_ >= 0) {
          half_rows.resize(rows->size());
          for (std::size_t e = 0; e < rows->size(); ++e) half_rows[e] = part_rows((*rows)[e]);
          rows = &half_rows;
        }
        for (int i = 0; i < c; ++i) {
          const auto& part = chunk(*rows, i, c);
          const double n = static_cast<double>(sum(part));
          const OpId e1 = comp(g, "expert_fc1", l, mb, c_.grouped_gemm(part, h, F * gated_) + fp8_cast(n * h),
                               2.0 * n * static_cast<double>(h * F * gated_));
          if (mult != 0) layer_report(l).rows_fed_fwd += sum(part);
          out_.graph.flow(e1, f.disp[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)]);
          act_op(g, "expert_act", l, mb, sum(part), F, false);
          fc2[static_cast<std::size_t>(r)].push_back(
              comp(g, "expert_fc2", l, mb, c_.grouped_gemm(part, F, h) + fp8_cast(n * static_cast<double>(F)),
                   2.0 * n * static_cast<double>(F * h)));
        }
        out_.flops.model += mult * 2.0 * static_cast<double>(part_rows(sl.kept_rows[static_cast<std::size_t>(r)])) *
                            static_cast<double>(h * F) * static_cast<double>(gated_ + 1);
        out_.flops.model += mult * fr;
      }
      OpId last_comb = kNoOp;
      for (int i = 0; i < c; ++i) {
        last_comb = coll(a2a(grp, sl.combine, false, Category::kCombine, l, mb, false, sl.combine_sm_bytes), "combine",
                         Stream::kEpComm, {}, o_.a2a_sm_count);
        for (int r = 0; r < ep; ++r)
          out_.graph.flow(last_comb, fc2[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)]);
      }
      f.comb[static_cast<std::size_t>(j)] = last_comb;
    }
  }
  /// Unpermute after the combine.
  void moe_post(int st, int mb, int l, const MoeInFlight& f) {
    const int ep = lay_.ep, G = lay_.ep_groups_per_stage();
    const std::int64_t rb = models::row_bytes(m_.hidden, models::WireFormat::kBf16);
    for (int j = 0; j < G; ++j) {
      const EpSlice& sl = slices_[static_cast<std::size_t>(l)][static_cast<std::size_t>(mb * G + j)];
      const auto grp = ep_group(st, j);
      for (int r = 0; r < ep; ++r) {
        const int g = grp[static_cast<std::size_t>(r)];
        pending_[static_cast<std::size_t>(g)].push_back(f.comb[static_cast<std::size_t>(j)]);
        const std::int64_t rows = part_rows(sl.sent_rows[static_cast<std::size_t>(r)]);
        comp(g, "unpermute", l, mb, c_.unpermute(rows, rb), 0, static_cast<double>(rows * rb));
      }
    }
  }

  /// sm_bytes: the matrix's most bytes one rank sends + receives (EpSlice), for the SM-bound
  /// floor of deepep_normal kernels with comm_sms (0: no floor).
  CollectiveRequest a2a(const std::vector<int>& grp, std::shared_ptr<const std::vector<double>> m, bool transpose,
                        Category cat, int l, int mb, bool bwd, double sm_bytes) const {
    CollectiveRequest r;
    r.kind = CollectiveKind::kAllToAllV;
    r.gpus = grp;
    r.matrix = std::move(m);
    r.transpose = transpose;
    r.scale = (half_ < 0 ? 1.0 : 0.5) / o_.overlap_chunks;
    if (o_.dispatcher == Dispatcher::kDeepepNormal) r.wire_inflation = 1.0 / kDeepepNormalEfficiency;
    if (sm_bytes > 0 && o_.a2a_sm_count > 0 && o_.sm_copy_bandwidth > 0)
      r.min_time = sim::duration_for(sm_bytes * r.scale, o_.a2a_sm_count * o_.sm_copy_bandwidth);
    r.category = cat;
    r.layer = l;
    r.micro_batch = mb;
    r.backward = bwd;
    return r;
  }

  /// Rows of chunk i of c (the rows themselves when c == 1; else a scratch buffer reused by
  /// the next call).
  const std::vector<std::int64_t>& chunk(const std::vector<std::int64_t>& rows, int i, int c) {
    if (c == 1) return rows;
    chunk_.resize(rows.size());
    for (std::size_t e = 0; e < rows.size(); ++e) chunk_[e] = rows[e] / c + (i < rows[e] % c ? 1 : 0);
    return chunk_;
  }
  Stream dp_stream() const { return o_.separate_comm_streams ? Stream::kDpComm : Stream::kEpComm; }
  Stream pp_stream() const { return o_.separate_comm_streams ? Stream::kPpComm : Stream::kEpComm; }
  static std::int64_t sum(const std::vector<std::int64_t>& v) {
    std::int64_t s = 0;
    for (auto x : v) s += x;
    return s;
  }

  /// dgrad + wgrad of a GEMM [M x K] * [K x N] on gpu g.
  void gemm_bwd(int g, const char* dname, const char* wname, int l, int mb, std::int64_t M, std::int64_t N,
                std::int64_t K, bool head = false) {
    const auto f = [](std::int64_t a, std::int64_t b, std::int64_t c) {
      return 2.0 * static_cast<double>(a) * static_cast<double>(b) * static_cast<double>(c);
    };
    const Gemm d = head ? Gemm{c_.head_gemm(M, K, N), f(M, K, N)} : gemm(M, K, N);
    const Gemm w = head ? Gemm{c_.head_gemm(K, N, M), f(K, N, M)} : gemm(K, N, M, false);
    comp(g, dname, l, mb, d.t, d.flops);
    comp(g, wname, l, mb, w.t, w.flops);
  }

  void backward_layer(int st, int mb, int l) {
    const auto gpus = stage_gpus(st);
    const double act_bytes = static_cast<double>(tokens_ * m_.hidden * bpe_);
    const std::int64_t h = m_.hidden;
    if (m_.moe_layer[static_cast<std::size_t>(l)]) {
      tp_collective(st, CollectiveKind::kReduceScatter, act_bytes, "tp_rs.bwd", l, mb, true);
      moe_block_bwd(st, mb, l);
      tp_collective(st, CollectiveKind::kAllGather, act_bytes, "tp_ag.bwd", l, mb, true);
    } else {
      const std::int64_t F = m_.dense_ffn / lay_.tp;
      for (int g : gpus) {
        gemm_bwd(g, "ffn_fc2.dgrad", "ffn_fc2.wgrad", l, mb, tokens_, h, F);
        act_op(g, "ffn_act.bwd", l, mb, tokens_, F, true);
        gemm_bwd(g, "ffn_fc1.dgrad", "ffn_fc1.wgrad", l, mb, tokens_, F * gated_, h);
      }
      tp_collective(st, CollectiveKind::kAllReduce, act_bytes, "tp_allreduce.bwd", l, mb, true);
    }
    const AttentionShape as = attn_shape();
    const SimTime ta = c_.attention(as);
    for (int g : gpus) {
      norm_op(g, l, mb, true);
      gemm_bwd(g, "o_proj.dgrad", "o_proj.wgrad", l, mb, tokens_, h, attn_out_dim());
    }
    attention_op(st, l, mb, "attn.bwd", ta * 2 + scaled(ta, 1, 2), 2.5 * attention_flops(as), 2.0 * attention_bytes(as),
                 true);
    for (int g : gpus) {
      comp(g, "rope.bwd", l, mb, c_.elementwise(rope_bytes()), 0, rope_bytes());
      SimTime td{}, tw{};
      double fd = 0, fw = 0;
      for (const auto& q : qkv_gemms()) {
        const Gemm d = gemm(q[0], q[2], q[1]), w = gemm(q[2], q[1], q[0], false);
        td += d.t;
        tw += w.t;
        fd += d.flops;
        fw += w.flops;
      }
      comp(g, "qkv.dgrad", l, mb, td, fd);
      comp(g, "qkv.wgrad", l, mb, tw, fw);
      norm_op(g, l, mb, true);
    }
    tp_collective(st, CollectiveKind::kAllReduce, act_bytes, "tp_allreduce.bwd", l, mb, true);
  }

  void moe_block_bwd(int st, int mb, int l) {
    const int ep = lay_.ep, G = lay_.ep_groups_per_stage(), c = o_.overlap_chunks;
    const std::int64_t h = m_.hidden, F = m_.expert_ffn;
    const std::int64_t rb = models::row_bytes(h, models::WireFormat::kBf16);
    const std::int64_t Fs = m_.shared_expert_ffn * m_.shared_experts / lay_.tp;
    const SimTime tr = c_.router_topk(moe_tokens_, h, m_.experts, m_.top_k);
    const double fr = 2.0 * static_cast<double>(moe_tokens_ * h) * m_.experts;
    for (int j = 0; j < G; ++j) {
      const EpSlice& sl = slices_[static_cast<std::size_t>(l)][static_cast<std::size_t>(mb * G + j)];
      const auto grp = ep_group(st, j);
      for (int r = 0; r < ep; ++r) {
        const std::int64_t rows = sl.sent_rows[static_cast<std::size_t>(r)];
        comp(grp[static_cast<std::size_t>(r)], "unpermute.bwd", l, mb, c_.unpermute(rows, rb), 0,
             static_cast<double>(rows * rb));
      }
      // Combine backward: output gradients go source -> expert rank (the combine matrix transposed).
      std::vector<OpId> cb(static_cast<std::size_t>(c));
      for (int i = 0; i < c; ++i)
        cb[static_cast<std::size_t>(i)] =
            coll(a2a(grp, sl.combine, true, Category::kCombine, l, mb, true, sl.combine_sm_bytes), "combine.bwd",
                 Stream::kEpComm, lasts(grp), o_.a2a_sm_count);
      std::vector<std::vector<OpId>> d1(static_cast<std::size_t>(ep));
      for (int r = 0; r < ep; ++r) {
        const int g = grp[static_cast<std::size_t>(r)];
        if (m_.shared_experts > 0) {
          gemm_bwd(g, "shared_fc2.dgrad", "shared_fc2.wgrad", l, mb, tokens_, h, Fs);
          act_op(g, "shared_act.bwd", l, mb, tokens_, Fs, true);
          gemm_bwd(g, "shared_fc1.dgrad", "shared_fc1.wgrad", l, mb, tokens_, Fs * gated_, h);
        }
        const auto& rows = sl.rows[static_cast<std::size_t>(r)];
        for (int i = 0; i < c; ++i) {
          const auto& part = chunk(rows, i, c);
          const double n = static_cast<double>(sum(part));
          const OpId e2 =
              comp(g, "expert_fc2.dgrad", l, mb, c_.grouped_gemm(part, h, F) + fp8_cast(n * static_cast<double>(h)),
                   2.0 * n * static_cast<double>(F * h));
          layer_report(l).rows_fed_bwd += sum(part);
          out_.graph.flow(e2, cb[static_cast<std::size_t>(i)]);
          act_op(g, "expert_act.bwd", l, mb, sum(part), F, true);
          d1[static_cast<std::size_t>(r)].push_back(
              comp(g, "expert_fc1.dgrad", l, mb,
                   c_.grouped_gemm(part, F * gated_, h) + fp8_cast(n * static_cast<double>(F * gated_)),
                   2.0 * n * static_cast<double>(h * F * gated_)));
        }
      }
      // Dispatch backward: input gradients go expert rank -> source (the combine matrix as is).
      OpId last_db = kNoOp;
      for (int i = 0; i < c; ++i) {
        last_db = coll(a2a(grp, sl.combine, false, Category::kDispatch, l, mb, true, sl.combine_sm_bytes),
                       "dispatch.bwd", Stream::kEpComm, {}, o_.a2a_sm_count);
        for (int r = 0; r < ep; ++r)
          out_.graph.flow(last_db, d1[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)]);
      }
      for (int r = 0; r < ep; ++r) {
        const int g = grp[static_cast<std::size_t>(r)];
        const auto& rows = sl.rows[static_cast<std::size_t>(r)];
        const double n = static_cast<double>(sum(rows));
        // Weight gradients need no communication: they overlap the dispatch backward.
        comp(g, "expert_fc2.wgrad", l, mb, c_.grouped_gemm_wgrad(rows, F, h), 2.0 * n * static_cast<double>(F * h));
        comp(g, "expert_fc1.wgrad", l, mb, c_.grouped_gemm_wgrad(rows, h, F * gated_),
             2.0 * n * static_cast<double>(h * F * gated_));
        pending_[static_cast<std::size_t>(g)].push_back(last_db);
        const std::int64_t sent = sl.sent_rows[static_cast<std::size_t>(r)];
        comp(g, "permute.bwd", l, mb, c_.permute(sent, rb), 0, static_cast<double>(sent * rb));
        comp(g, "router.bwd", l, mb, tr * 2, 2.0 * fr);
      }
    }
  }

  // ---------------------------------------------------------------- embedding and head
  std::int64_t head_rows() const { return mb_.train ? tokens_ : mb_.seqs; }
  void embed_fwd(int st, int mb) {
    for (int g : stage_gpus(st))
      comp(g, "embed", -1, mb, c_.elementwise(2.0 * static_cast<double>(tokens_ * m_.hidden * bpe_)), 0);
  }
  void head_fwd(int st, int mb) {
    const Gemm x{c_.head_gemm(head_rows(), m_.vocab / lay_.tp, m_.hidden), 2.0 * static_cast<double>(head_rows()) *
                                                                               static_cast<double>(m_.vocab / lay_.tp) *
                                                                               static_cast<double>(m_.hidden)};
    const double logits = 4.0 * static_cast<double>(head_rows() * (m_.vocab / lay_.tp));
    for (int g : stage_gpus(st)) {
      comp(g, "lm_head", -1, mb, x.t, x.flops);
      if (mb_.train) comp(g, "loss", -1, mb, c_.elementwise(2.0 * logits), 0);
      out_.flops.model += (mb_.train ? 3.0 : 1.0) * x.flops;
    }
  }
  void head_bwd(int st, int mb) {
    const double logits = 4.0 * static_cast<double>(tokens_ * (m_.vocab / lay_.tp));
    for (int g : stage_gpus(st)) {
      comp(g, "loss.bwd", -1, mb, c_.elementwise(2.0 * logits), 0);
      gemm_bwd(g, "lm_head.dgrad", "lm_head.wgrad", -1, mb, tokens_, m_.vocab / lay_.tp, m_.hidden, true);
    }
  }
  void embed_bwd(int st, int mb) {
    for (int g : stage_gpus(st))
      comp(g, "embed.bwd", -1, mb, c_.elementwise(2.0 * static_cast<double>(tokens_ * m_.hidden * bpe_)), 0);
  }

  // ---------------------------------------------------------------- data-parallel reduction
  // ---------------------------------------------------------------- ZeRO-3 parameter gathers
  bool zero3() const { return mb_.train && o_.zero_stage == 3; }
  /// Gradients reduced in every micro-batch's backward (sharded accumulation), not only the last.
  bool reduce_every_micro_batch() const {
    return mb_.train && o_.zero_stage >= 2 && o_.grad_sync == GradSync::kPerMicroBatch;
  }
  /// All-gather of one FSDP unit's params (a layer: dense over the DP group of each TP index,
  /// experts over each expert-DP group; the embedding or head: dense only) before it computes.
  /// Prefetched one unit ahead: a unit's gather may start once the unit two back has finished on
  /// every member (FSDP's forward/backward prefetch), and its first kernel waits for it.
  void gather_unit(int st, double dense_params, double expert_params, int layer, int mb, bool bwd) {
    const auto issue = [&](const std::vector<int>& gpus, double params) {
      if (gpus.size() < 2 || params <= 0) return;
      CollectiveRequest r;
      r.kind = CollectiveKind::kAllGather;
      r.gpus = gpus;
      r.bytes = params * bpe_;
      r.category = Category::kDataParallel;
      r.layer = layer;
      r.micro_batch = mb;
      r.backward = bwd;
      std::vector<OpId> deps;
      for (int g : gpus) deps.push_back(prefetch_anchor_[static_cast<std::size_t>(g)]);
      const OpId id =
          coll(std::move(r), "fsdp_param_gather", o_.separate_comm_streams ? Stream::kDpGather : Stream::kEpComm, deps);
      for (int g : gpus) pending_[static_cast<std::size_t>(g)].push_back(id);
    };
    for (int t = 0; t < lay_.tp; ++t) issue(dp_group(st, t), dense_params);
    for (int r = 0; r < lay_.ep; ++r) issue(edp_group(st, r), expert_params);
    for (int g : stage_gpus(st)) prefetch_anchor_[static_cast<std::size_t>(g)] = last_[static_cast<std::size_t>(g)];
  }
  /// The gather a unit needs before this use, if any: every use with param_gather per_use, each
  /// forward with per_micro_batch, the first forward only with per_step.
  void maybe_gather(int st, double dense_params, double expert_params, int layer, int mb, bool bwd) {
    if (!zero3()) return;
    if (bwd && o_.param_gather != ParamGather::kPerUse) return;
    if (o_.param_gather == ParamGather::kPerStep) {
      auto& done = gathered_[static_cast<std::size_t>(layer + 2)];
      if (done) return;
      done = 1;
    }
    gather_unit(st, dense_params, expert_params, layer, mb, bwd);
  }
  void maybe_gather_layer(int st, int l, int mb, bool bwd) {
    if (!zero3()) return;
    const LayerParams lp = layer_params(m_, l);
    maybe_gather(st, static_cast<double>(lp.dense_local(lay_.tp)),
                 static_cast<double>(lp.per_expert) * lp.experts / lay_.ep, l, mb, bwd);
  }
  double table_params() const { return static_cast<double>(m_.vocab * m_.hidden) / lay_.tp; }
  bool head_has_own_table() const { return !m_.tied_embeddings || lay_.pp > 1; }

  void reduce(int st, double dense_params, double expert_params, int layer) {
    const CollectiveKind kind = o_.zero_stage >= 1 ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce;
    const auto issue = [&](const std::vector<int>& gpus, double params) {
      if (gpus.size() < 2 || params <= 0) return;
      CollectiveRequest r;
      r.kind = kind;
      r.gpus = gpus;
      r.bytes = params * o_.grad_bytes;
      r.category = Category::kDataParallel;
      r.layer = layer;
      r.backward = true;
      const OpId id = coll(std::move(r), "dp_grad_reduce", dp_stream(), lasts(gpus));
      for (int g : gpus) reduce_ops_[static_cast<std::size_t>(g)].push_back(id);
    };
    for (int t = 0; t < lay_.tp; ++t) issue(dp_group(st, t), dense_params);
    for (int r = 0; r < lay_.ep; ++r) issue(edp_group(st, r), expert_params);
  }

  double stage_dense_params(int st) const {
    double p = 0;
    for (int l : stage_layer_list(st)) p += static_cast<double>(layer_params(m_, l).dense_local(lay_.tp));
    if (st == 0) p += static_cast<double>(m_.vocab * m_.hidden) / lay_.tp;
    if (st == lay_.pp - 1 && (!m_.tied_embeddings || lay_.pp > 1))
      p += static_cast<double>(m_.vocab * m_.hidden) / lay_.tp;
    return p;
  }
  double stage_expert_params(int st) const {
    double p = 0;
    for (int l : stage_layer_list(st)) {
      const LayerParams lp = layer_params(m_, l);
      p += static_cast<double>(lp.per_expert) * lp.experts / lay_.ep;
    }
    return p;
  }

  void optimizer(int st) {
    const double dense = stage_dense_params(st), expert = stage_expert_params(st);
    const double dshard = o_.zero_stage >= 1 ? lay_.dp : 1, eshard = o_.zero_stage >= 1 ? lay_.expert_dp() : 1;
    const double params = dense / dshard + expert / eshard;
    for (int g : stage_gpus(st)) {
      auto& p = pending_[static_cast<std::size_t>(g)];
      p.insert(p.end(), reduce_ops_[static_cast<std::size_t>(g)].begin(),
               reduce_ops_[static_cast<std::size_t>(g)].end());
      comp(g, "optimizer", -1, -1, c_.elementwise(params * o_.optimizer_bytes_per_param), 0,
           params * o_.optimizer_bytes_per_param);
      // FP8 training: the updated weights are quantised once per step (TE caches the FP8 weights
      // of the first micro-batch for the rest).
      if (fp8_train_) comp(g, "fp8_weight_cast", -1, -1, fp8_cast(dense + expert), 0, 4.0 * (dense + expert));
    }
    // ZeRO-1/2 gather the updated params back; ZeRO-3 keeps them sharded until their next use.
    if (o_.zero_stage < 1 || o_.zero_stage > 2) return;
    for (int t = 0; t < lay_.tp; ++t)
      if (lay_.dp > 1)
        blocking(CollectiveKind::kAllGather, dp_group(st, t), dense * bpe_, "dp_param_gather", -1, -1, false,
                 dp_stream(), Category::kDataParallel);
    for (int r = 0; r < lay_.ep; ++r)
      if (lay_.expert_dp() > 1 && expert > 0)
        blocking(CollectiveKind::kAllGather, edp_group(st, r), expert * bpe_, "dp_param_gather", -1, -1, false,
                 dp_stream(), Category::kDataParallel);
  }

  // ---------------------------------------------------------------- pipeline
  /// Activations (forward) or their gradients (backward) of micro-batch mb from virtual stage
  /// v_from to v_to (adjacent), one send/recv per (dp, tp) index; recv[v_to][mb] gets the ids.
  void p2p(int v_from, int v_to, int mb, bool bwd, std::vector<std::vector<std::vector<OpId>>>& recv) {
    const double bytes = static_cast<double>(moe_tokens_ * m_.hidden * bpe_);
    const int st_from = v_from % lay_.pp, st_to = v_to % lay_.pp;
    for (int d = 0; d < lay_.dp; ++d)
      for (int t = 0; t < lay_.tp; ++t) {
        CollectiveRequest r;
        r.kind = CollectiveKind::kSendRecv;
        const int a = lay_.global(st_from, d, t), b = lay_.global(st_to, d, t);
        r.gpus = {a, b};
        r.bytes = bytes;
        r.category = Category::kPipeline;
        r.micro_batch = mb;
        r.backward = bwd;
        // Queued in the sender's stream order only: the receiver posts its receive ahead
        // (Megatron's overlapped p2p, irecv), so a transfer never waits behind the receiver's
        // own sends in the order this builder happens to emit them.
        const OpId id = coll(std::move(r), bwd ? "pp_send_grad" : "pp_send_act", pp_stream(),
                             {last_[static_cast<std::size_t>(a)]}, 0, 1);
        auto& slot = recv[static_cast<std::size_t>(v_to)][static_cast<std::size_t>(mb)];
        slot.resize(static_cast<std::size_t>(lay_.stage_size()), kNoOp);
        slot[static_cast<std::size_t>(d * lay_.tp + t)] = id;
      }
  }

  void take(std::vector<OpId>& ids, int st) {
    // ids[local rank]: the transfer that GPU receives; its next kernel waits for it.
    for (std::size_t i = 0; i < ids.size(); ++i)
      if (ids[i] != kNoOp)
        pending_[static_cast<std::size_t>(lay_.global_of_local(st, static_cast<int>(i)))].push_back(ids[i]);
    ids.clear();
  }

  /// Forward of micro-batch mb through virtual stage v (on pipeline rank v % pp).
  void forward_action(int v, int mb, std::vector<std::vector<std::vector<OpId>>>& fwd_recv) {
    const int st = v % lay_.pp;
    take(fwd_recv[static_cast<std::size_t>(v)][static_cast<std::size_t>(mb)], st);
    if (v == 0) {
      maybe_gather(st, table_params(), 0, -2, mb, false);
      embed_fwd(st, mb);
    }
    if (tbo_)
      forward_layers_tbo(st, mb, v);
    else
      for (int l = vranges_[static_cast<std::size_t>(v)].first; l < vranges_[static_cast<std::size_t>(v)].second; ++l) {
        maybe_gather_layer(st, l, mb, false);
        forward_layer(st, mb, l, false);
      }
    if (v == virtual_stages() - 1) {
      if (head_has_own_table()) maybe_gather(st, table_params(), 0, -1, mb, false);
      head_fwd(st, mb);
    } else
      p2p(v, v + 1, mb, false, fwd_recv);
  }

  void backward_action(int v, int mb, std::vector<std::vector<std::vector<OpId>>>& bwd_recv) {
    const int st = v % lay_.pp;
    take(bwd_recv[static_cast<std::size_t>(v)][static_cast<std::size_t>(mb)], st);
    const bool last_mb = mb == last_backward_mb_;
    const bool reduce_now = last_mb || reduce_every_micro_batch();
    const double head = table_params();
    if (v == virtual_stages() - 1) {
      if (head_has_own_table()) maybe_gather(st, head, 0, -1, mb, true);
      head_bwd(st, mb);
      if (reduce_now && head_has_own_table()) reduce(st, head, 0, -1);
    }
    for (int l = vranges_[static_cast<std::size_t>(v)].second - 1; l >= vranges_[static_cast<std::size_t>(v)].first;
         --l) {
      maybe_gather_layer(st, l, mb, true);
      if (s_.workload.recompute)
        forward_layer(st, mb, l, true);
      else if (s_.workload.recompute_modules != 0)
        recompute_selective(st, mb, l);
      backward_layer(st, mb, l);
      if (reduce_now) {
        const LayerParams lp = layer_params(m_, l);
        reduce(st, static_cast<double>(lp.dense_local(lay_.tp)),
               static_cast<double>(lp.per_expert) * lp.experts / lay_.ep, l);
      }
    }
    if (v == 0) {
      maybe_gather(st, head, 0, -2, mb, true);
      embed_bwd(st, mb);
      if (reduce_now) reduce(st, head, 0, -1);
    } else {
      p2p(v, v - 1, mb, true, bwd_recv);
    }
  }

  /// Every rank's actions in pipeline_schedule order, emitted round-robin over ranks as soon as
  /// what they consume has been emitted (so each GPU's ops keep the schedule's order).
  void schedule() {
    const int P = lay_.pp, M = mb_.micro_batches, V = virtual_stages();
    std::vector<std::vector<PipelineAction>> plan(static_cast<std::size_t>(P));
    for (int st = 0; st < P; ++st) plan[static_cast<std::size_t>(st)] = pipeline_schedule(P, vpp_, M, st, mb_.train);
    // Gradients are reduced in the backward of the micro-batch each rank runs last (the same one
    // on every rank: the schedule's last backward).
    last_backward_mb_ = M - 1;
    if (mb_.train)
      for (auto it = plan[0].rbegin(); it != plan[0].rend(); ++it)
        if (!it->forward) {
          last_backward_mb_ = it->micro_batch;
          break;
        }
    std::vector<std::vector<std::uint8_t>> fdone(static_cast<std::size_t>(V), std::vector<std::uint8_t>(M, 0)),
        bdone = fdone;
    std::vector<std::vector<std::vector<OpId>>> fwd_recv(static_cast<std::size_t>(V),
                                                         std::vector<std::vector<OpId>>(static_cast<std::size_t>(M))),
        bwd_recv = fwd_recv;
    std::vector<std::size_t> next(static_cast<std::size_t>(P), 0);
    std::size_t remaining = 0;
    for (const auto& a : plan) remaining += a.size();
    while (remaining > 0) {
      bool progress = false;
      for (int st = 0; st < P; ++st) {
        auto& n = next[static_cast<std::size_t>(st)];
        if (n >= plan[static_cast<std::size_t>(st)].size()) continue;
        const PipelineAction a = plan[static_cast<std::size_t>(st)][n];
        const auto m = static_cast<std::size_t>(a.micro_batch);
        const int v = a.chunk * P + st;
        const auto vi = static_cast<std::size_t>(v);
        const bool ready =
            a.forward ? (v == 0 || fdone[vi - 1][m] != 0) : (v == V - 1 ? fdone[vi][m] != 0 : bdone[vi + 1][m] != 0);
        if (!ready) continue;
        if (a.forward) {
          forward_action(v, a.micro_batch, fwd_recv);
          fdone[vi][m] = 1;
        } else {
          backward_action(v, a.micro_batch, bwd_recv);
          bdone[vi][m] = 1;
        }
        ++n;
        --remaining;
        progress = true;
      }
      if (!progress) throw std::logic_error("build_step: pipeline schedule deadlocked");
    }
    if (mb_.train)
      for (int st = 0; st < P; ++st) optimizer(st);
  }

  const Scenario& s_;
  const models::ModelSpec& m_;
  const ComputeCosts& c_;
  const StepBuildOptions& o_;
  BuiltStep& out_;
  RankLayout lay_;
  MicroBatchShape mb_;
  std::vector<std::pair<int, int>> vranges_;  // [virtual stage] layer range
  std::vector<int> stage_of_layer_;           // [layer] pipeline rank
  int vpp_ = 1;
  int last_backward_mb_ = 0;
  models::Placement placement_;
  models::DestinationMap dest_map_;  ///< deepep_normal only (replicas == nullptr otherwise)
  std::vector<int> local_of_rank_;
  std::vector<std::vector<EpSlice>> slices_;  // [layer][mb * ep_groups + j]
  std::vector<OpId> last_;
  std::vector<std::vector<OpId>> pending_;
  std::vector<std::vector<OpId>> reduce_ops_;
  int half_ = -1;  ///< two-batch overlap: the half being emitted (0 or 1), -1 the whole batch
  struct HalfShape {
    std::int64_t seqs, q, kv;
  };
  std::optional<HalfShape> half_shape_;  ///< attention shape of the half being emitted
  bool tbo_ = false;                     ///< execution.two_batch_overlap (inference)
  bool host_free_ = false;               ///< ops issued inside one host call (ring attention's steps): no host cost
  std::vector<OpId> prefetch_anchor_;    ///< [gpu] last op before the previous gathered unit (ZeRO-3)
  std::vector<std::uint8_t> gathered_;   ///< [layer + 2] unit gathered this step (per_step); 0 embed, 1 head
  std::int64_t gated_ = 2;
  std::int64_t tokens_ = 0, moe_tokens_ = 0, bpe_ = 2;
  bool fp8_gemms_ = false;  ///< FP8 linear GEMMs: inputs quantised per use (training: weights once per step)
  bool fp8_train_ = false;  ///< ... in training
  std::vector<std::int64_t> chunk_;
  std::vector<int> moe_index_;  // layer -> index into out_.moe_layers
  MoeLayerReport& layer_report(int l) {
    return out_.moe_layers[static_cast<std::size_t>(moe_index_[static_cast<std::size_t>(l)])];
  }
  std::vector<KernelTotals> kernels_;  // by graph name id

 public:
  void finish_kernels() {
    const auto& names = out_.graph.names();
    for (std::size_t i = 0; i < kernels_.size(); ++i)
      if (kernels_[i].count > 0) out_.kernels[names[i]] = kernels_[i];
  }
};

}  // namespace

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

BuiltStep build_step(const Scenario& s, const ComputeCosts& costs, const StepBuildOptions& opt) {
  if (!s.has_model) throw std::invalid_argument("build_step: the scenario has no model");
  BuiltStep out(s.parallel.world());
  Builder b(s, costs, opt, out);
  b.build();
  b.finish_kernels();
  const double t0 = thread_cpu_seconds();
  out.memory = estimate_memory(s, memory_options(opt));
  out.host_memory_s = thread_cpu_seconds() - t0;
  return out;
}

double max_handled_bytes(const std::vector<double>& m, int ranks) {
  double worst = 0;
  const auto n = static_cast<std::size_t>(ranks);
  for (std::size_t g = 0; g < n; ++g) {
    double b = 0;
    for (std::size_t o = 0; o < n; ++o) b += m[g * n + o] + m[o * n + g];
    worst = std::max(worst, b);
  }
  return worst;
}

MemoryOptions memory_options(const StepBuildOptions& opt) {
  MemoryOptions mo;
  mo.capacity_bytes = opt.memory_capacity_bytes;
  mo.grad_bytes = opt.grad_bytes;
  mo.zero_stage = opt.zero_stage;
  mo.param_gather = opt.param_gather;
  mo.grad_sync = opt.grad_sync;
  mo.optimizer_state_bytes = opt.optimizer_state_bytes;
  mo.dispatch_format = opt.dispatch_format;
  return mo;
}

SimpleCommBackend::SimpleCommBackend(sim::Simulation& s, const std::vector<CollectiveRequest>& reqs, double bytes_per_s,
                                     SimTime latency)
    : sim_(s), reqs_(reqs), bw_(bytes_per_s), latency_(latency) {}

SimTime SimpleCommBackend::duration(const CollectiveRequest& r) const {
  const double G = r.group_size();
  double amount = 0;
  switch (r.kind) {
    case CollectiveKind::kAllToAllV: {
      const int n = r.group_size();
      for (int a = 0; a < n; ++a) {
        double sent = 0, recv = 0;
        for (int b = 0; b < n; ++b) {
          if (a == b) continue;
          sent += r.at(a, b);
          recv += r.at(b, a);
        }
        amount = std::max({amount, sent, recv});
      }
      amount *= r.wire_inflation;
      break;
    }
    case CollectiveKind::kAllReduce:
      amount = 2.0 * (G - 1) / G * r.bytes;
      break;
    case CollectiveKind::kReduceScatter:
    case CollectiveKind::kAllGather:
      amount = (G - 1) / G * r.bytes;
      break;
    case CollectiveKind::kSendRecv:
      amount = r.bytes;
      break;
  }
  return latency_ + (amount > 0 ? sim::duration_for(amount, bw_) : SimTime::zero());
}

void SimpleCommBackend::start(std::uint32_t idx, sim::Callback done) {
  sim_.schedule_in(duration(reqs_.at(idx)), std::move(done), sim::Phase::kComplete);
}

}  // namespace moesim::engine
