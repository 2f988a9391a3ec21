// Routing pipeline: gate + top-k, histogram/scan, capacity (position, probs), permute, combine,
// pack by rank (plain and dedup), CUB radix sort. One pass in pipeline order, then each stage is
// checked against the CPU reference fed with the GPU's own routing decision (a near-tie in top-k
// cannot cascade). Integer outputs (O(T k) values) are checked in full; data rows (O(T k H)) on a
// sample, so the host never holds a [T k, H] tensor (DeepSeek-V3 at T = 65,536: 15 GB each).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "validation_kernels/harness/runner.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

namespace moesim::vk {

namespace {
constexpr int64_t kGateSampleAbove = 16384;  // check every token up to this T, else a sample
constexpr int64_t kGateSample = 8192;
constexpr int64_t kRowSample = 192;  // permuted / packed rows and combined tokens checked per stage
}  // namespace

void Runner::run_routing(const Config& c) {
  const RoutingConfig& r = c.routing;
  const int T = static_cast<int>(r.tokens), E = r.experts, k = r.topk, H = static_cast<int>(r.hidden), S = T * k;
  const int R = r.ranks;
  const int64_t C = ref::capacity_for(r.tokens, k, E, r.capacity_factor);
  cudaStream_t st = dev_.stream();
  DeviceScope mem(dev_);
  float* d_logits = mem.alloc<float>(static_cast<size_t>(T) * E);
  float* d_bias = mem.alloc<float>(static_cast<size_t>(E));
  gpu::bf16* d_x = mem.alloc<gpu::bf16>(static_cast<size_t>(T) * H);
  gpu::bf16* d_perm = mem.alloc<gpu::bf16>(static_cast<size_t>(S) * H);
  gpu::bf16* d_comb = mem.alloc<gpu::bf16>(static_cast<size_t>(T) * H);
  gpu::bf16* d_pack = mem.alloc<gpu::bf16>(static_cast<size_t>(S) * H);
  int *d_exp = mem.alloc<int>(S), *d_pos = mem.alloc<int>(S), *d_pos2 = mem.alloc<int>(S), *d_rows = mem.alloc<int>(S);
  int *d_cnt = mem.alloc<int>(E), *d_off = mem.alloc<int>(E + 1), *d_kept = mem.alloc<int>(E),
      *d_koff = mem.alloc<int>(E + 1), *d_kept2 = mem.alloc<int>(E);
  int *d_roff = mem.alloc<int>(R + 1), *d_key = mem.alloc<int>(static_cast<size_t>(T) * R),
      *d_rrank = mem.alloc<int>(static_cast<size_t>(T) * R), *d_rtot = mem.alloc<int>(R),
      *d_droff = mem.alloc<int>(R + 1), *d_tok = mem.alloc<int>(static_cast<size_t>(S));
  int *d_sexp = mem.alloc<int>(S), *d_sslot = mem.alloc<int>(S);
  float *d_w = mem.alloc<float>(S), *d_s = mem.alloc<float>(S);
  int* d_rank_scratch = mem.alloc<int>(gpu::stable_rank_scratch_ints(std::max(S, T * R), std::max(E, R)));
  const size_t probs_bytes = gpu::capacity_probs_scratch_bytes(S, E);
  const size_t sort_bytes = gpu::radix_sort_scratch_bytes(S);
  void* d_scratch = mem.alloc<unsigned char>(std::max(probs_bytes, sort_bytes));
  VK_CUDA(gpu::fill_normal_f32(d_logits, static_cast<size_t>(T) * E, c.seed, 1.0f, st));
  VK_CUDA(gpu::fill_normal_f32(d_bias, static_cast<size_t>(E), c.seed + 1, 0.1f, st));
  VK_CUDA(gpu::fill_normal_bf16(d_x, static_cast<size_t>(T) * H, c.seed + 2, 1.0f, st));
  const bool sig = r.gate == ref::GateKind::kSigmoidBias;
  gpu::GateArgs ga;
  ga.logits = d_logits;
  ga.bias = sig ? d_bias : nullptr;
  ga.tokens = T;
  ga.experts = E;
  ga.topk = k;
  ga.sigmoid = sig;
  ga.num_groups = r.num_groups;
  ga.topk_group = r.topk_group;
  ga.renormalize = true;
  ga.expert = d_exp;
  ga.weight = d_w;
  ga.score = d_s;

  // Launch closures, one per measured kernel (or short kernel chain).
  const std::vector<std::pair<std::string, Launch>> stages = {
      {"gate_topk", [&] { return gpu::gate_topk(ga, st); }},
      {"histogram_scan",
       [&] {
         cudaError_t e = gpu::histogram(d_exp, S, E, d_cnt, st);
         return e == cudaSuccess ? gpu::exclusive_scan(d_cnt, E, 128, d_off, st) : e;
       }},
      {"capacity_position",
       [&] { return gpu::stable_rank_by_key(d_exp, S, E, static_cast<int>(C), d_pos, d_kept, d_rank_scratch, st); }},
      {"capacity_probs",
       [&] {
         return gpu::capacity_probs(d_exp, d_w, S, E, static_cast<int>(C), d_pos2, d_kept2, d_scratch, probs_bytes, st);
       }},
      {"permute",
       [&] {
         cudaError_t e = gpu::exclusive_scan(d_kept, E, 1, d_koff, st);
         if (e == cudaSuccess) e = gpu::slot_rows(d_exp, d_pos, d_koff, S, d_rows, st);
         return e == cudaSuccess ? gpu::permute(d_x, d_rows, S, k, H, d_perm, st) : e;
       }},
      {"unpermute_combine", [&] { return gpu::unpermute_combine(d_perm, d_rows, d_w, T, k, H, d_comb, st); }},
      {"pack_by_rank",
       [&] {
         cudaError_t e = gpu::rank_offsets_from_experts(d_koff, E, R, d_roff, st);
         return e == cudaSuccess ? gpu::permute(d_x, d_rows, S, k, H, d_pack, st) : e;
       }},
      {"pack_by_rank_dedup",
       [&] {
         cudaError_t e = gpu::dedup_rank_keys(d_exp, d_pos, T, k, E, R, d_key, st);
         if (e == cudaSuccess) e = gpu::stable_rank_by_key(d_key, T * R, R, -1, d_rrank, d_rtot, d_rank_scratch, st);
         if (e == cudaSuccess) e = gpu::exclusive_scan(d_rtot, R, 1, d_droff, st);
         return e == cudaSuccess ? gpu::pack_dedup(d_x, d_key, d_rrank, d_droff, T, R, H, d_pack, d_tok, st) : e;
       }},
      {"cub_radix_sort",
       [&] { return gpu::radix_sort_by_expert(d_exp, S, E, d_sexp, d_sslot, d_scratch, sort_bytes, st); }},
  };
  // One pass in pipeline order (poisoned outputs first), then every stage is checked.
  std::vector<std::string> status(stages.size(), "ok"), note(stages.size());
  std::vector<double> err(stages.size(), 0.0);
  VK_CUDA(cudaMemsetAsync(d_perm, 0xFF, static_cast<size_t>(S) * H * 2, st));
  VK_CUDA(cudaMemsetAsync(d_comb, 0xFF, static_cast<size_t>(T) * H * 2, st));
  VK_CUDA(cudaMemsetAsync(d_pack, 0xFF, static_cast<size_t>(S) * H * 2, st));  // unused rows match d_perm's
  const CsvRow base = base_row(c);
  for (size_t i = 0; i < stages.size(); ++i) {
    set_current(&c, &base, stages[i].first, "check");
    if (stages[i].first == "pack_by_rank_dedup") {  // pack_by_rank's rows are checked before dedup overwrites d_pack
      dev_.drain("pack_by_rank");
    }
    const cudaError_t e = stages[i].second();
    if (e != cudaSuccess) {
      status[i] = "error";
      note[i] = cudaGetErrorString(e);
      cudaGetLastError();
    }
    dev_.drain(stages[i].first);
    if (stages[i].first == "pack_by_rank") {
      // Sampled packed rows now (the dedup stage reuses the buffer): Megatron order = the permuted buffer.
      const auto rows = sample_indices(S, kRowSample, c.seed ^ 0x77);
      std::vector<uint16_t> a(rows.size() * static_cast<size_t>(H)), b(a.size());
      dev_.rows_to_host(a.data(), d_pack, rows, static_cast<size_t>(H) * 2, static_cast<size_t>(H) * 2, "packed rows");
      dev_.rows_to_host(b.data(), d_perm, rows, static_cast<size_t>(H) * 2, static_cast<size_t>(H) * 2, "perm rows");
      if (a != b && status[i] == "ok") {
        status[i] = "failed_check";
        err[i] = INFINITY;
        note[i] = "packed rows differ from the permuted rows";
      }
    }
  }
  set_current(&c, &base, "routing reference", "check");
  // Reference inputs: every logit (T x E floats), the GPU's routing decision (every slot).
  const auto logits = dev_.to_host(d_logits, static_cast<size_t>(T) * E, "logits");
  const auto bias = dev_.to_host(d_bias, static_cast<size_t>(E), "bias");
  ref::GateConfig gc;
  gc.kind = r.gate;
  gc.num_experts = E;
  gc.topk = k;
  gc.num_groups = r.num_groups;
  gc.topk_group = r.topk_group;
  gc.renormalize = true;
  ref::Routing got;
  got.tokens = T;
  got.topk = k;
  got.expert = dev_.to_host(d_exp, S, "experts");
  got.weight = dev_.to_host(d_w, S, "weights");
  got.score = dev_.to_host(d_s, S, "scores");
  auto mismatch = [&](size_t i, bool bad, const char* what) {
    if (bad && status[i] == "ok") {
      status[i] = "failed_check";
      note[i] = what;
    }
    if (bad) err[i] = INFINITY;
  };
  {
    const auto tokens = T <= kGateSampleAbove ? sample_indices(T, T, 0) : sample_indices(T, kGateSample, c.seed);
    const GateCheck g = check_gate_topk(logits.data(), sig ? bias.data() : nullptr, T, gc, tokens, got.expert.data(),
                                        got.weight.data(), got.score.data());
    err[0] = g.max_weight_err;
    if (!g.ok) mismatch(0, true, "gate_topk check failed");
    if (!g.ok) note[0] = g.problem;
    if (g.ok && g.tolerated_swaps) note[0] = std::to_string(g.tolerated_swaps) + " near-tie expert swaps tolerated";
  }
  // Later stages need a valid routing (ids in range) to be checked at all.
  bool ids_ok = true;
  for (int e : got.expert) ids_ok = ids_ok && e >= 0 && e < E;
  if (!ids_ok) {
    for (size_t i = 1; i < stages.size(); ++i) mismatch(i, true, "not checked: gate_topk produced invalid expert ids");
  } else {
    const auto hist = ref::histogram(got.expert, E);
    const auto scan = ref::exclusive_scan(hist, 128);
    {
      const auto cnt = dev_.to_host(d_cnt, E, "counts");
      const auto off = dev_.to_host(d_off, E + 1, "offsets");
      bool bad = false;
      for (int e = 0; e <= E; ++e) bad = bad || off[static_cast<size_t>(e)] != scan.offset[static_cast<size_t>(e)];
      for (int e = 0; e < E; ++e) bad = bad || cnt[static_cast<size_t>(e)] != hist[static_cast<size_t>(e)];
      mismatch(1, bad, "histogram or scan differs");
    }
    const ref::Capacity cpos = ref::enforce_capacity(got, E, C, ref::DropPolicy::kPosition);
    const ref::Capacity cprob = ref::enforce_capacity(got, E, C, ref::DropPolicy::kProbs);
    {
      const auto pos = dev_.to_host(d_pos, S, "positions"), pos2 = dev_.to_host(d_pos2, S, "positions (probs)");
      const auto kept = dev_.to_host(d_kept, E, "kept"), kept2 = dev_.to_host(d_kept2, E, "kept (probs)");
      bool b1 = false, b2 = false;
      for (int s = 0; s < S; ++s) {
        b1 = b1 || pos[static_cast<size_t>(s)] != cpos.position_in_expert[static_cast<size_t>(s)];
        b2 = b2 || pos2[static_cast<size_t>(s)] != cprob.position_in_expert[static_cast<size_t>(s)];
      }
      for (int e = 0; e < E; ++e) {
        b1 = b1 || kept[static_cast<size_t>(e)] != cpos.kept_count[static_cast<size_t>(e)];
        b2 = b2 || kept2[static_cast<size_t>(e)] != cprob.kept_count[static_cast<size_t>(e)];
      }
      mismatch(2, b1, "positions or kept counts differ");
      mismatch(3, b2, "positions or kept counts differ");
    }
    const ref::PermuteLayout layout = ref::contiguous_layout(got, cpos, E, 1);
    const size_t rowb = static_cast<size_t>(H) * 2;
    {
      // permute: the layout (every slot's row) in full, the data on sampled rows.
      const auto rows_of_slot = dev_.to_host(d_rows, S, "row of slot");
      bool bad = false;
      for (int s = 0; s < S; ++s)
        bad = bad || rows_of_slot[static_cast<size_t>(s)] != layout.row_of_slot[static_cast<size_t>(s)];
      std::vector<int64_t> prow, ptok;
      for (int64_t row : sample_indices(layout.total_rows, kRowSample, c.seed ^ 0x11)) {
        prow.push_back(row);
        ptok.push_back(layout.token_of_row[static_cast<size_t>(row)]);
      }
      std::vector<uint16_t> pg(prow.size() * static_cast<size_t>(H)), xg(pg.size());
      dev_.rows_to_host(pg.data(), d_perm, prow, rowb, rowb, "permuted rows");
      dev_.rows_to_host(xg.data(), d_x, ptok, rowb, rowb, "token rows");
      bad = bad || pg != xg;
      mismatch(4, bad, "permuted layout or rows differ");
      // combine: sampled tokens, from the GPU's own permuted rows and weights, in double.
      const auto toks = sample_indices(T, std::min<int64_t>(kRowSample / 2, T), c.seed ^ 0x22);
      std::vector<int64_t> need;
      for (int64_t t : toks)
        for (int j = 0; j < k; ++j) {
          const int64_t row = layout.row_of_slot[static_cast<size_t>(t * k + j)];
          if (row >= 0) need.push_back(row);
        }
      std::vector<uint16_t> rows_h(need.size() * static_cast<size_t>(H)), comb(toks.size() * static_cast<size_t>(H));
      dev_.rows_to_host(rows_h.data(), d_perm, need, rowb, rowb, "rows for combine");
      dev_.rows_to_host(comb.data(), d_comb, toks, rowb, rowb, "combined rows");
      std::vector<double> want(comb.size(), 0.0);
      size_t q = 0;
      for (size_t ti = 0; ti < toks.size(); ++ti)
        for (int j = 0; j < k; ++j) {
          const size_t s = static_cast<size_t>(toks[ti] * k + j);
          if (layout.row_of_slot[s] < 0) continue;
          const double w = got.weight[s];
          for (int h = 0; h < H; ++h)
            want[ti * static_cast<size_t>(H) + static_cast<size_t>(h)] +=
                w * bf16f(rows_h[q * static_cast<size_t>(H) + static_cast<size_t>(h)]);
          ++q;
        }
      std::vector<float> cg(comb.size());
      for (size_t i = 0; i < cg.size(); ++i) cg[i] = bf16f(comb[i]);
      const Tolerance tol;
      const CompareResult cr = compare_outputs(want, cg, tol);
      err[5] = cr.rel_err;
      mismatch(5, !cr.ok(tol.rel_norm), "combined rows differ from the reference");
    }
    {
      const auto pk = ref::pack_by_rank(nullptr, T, 0, got, cpos, E, R, false);  // layout only (hidden 0)
      const auto roff = dev_.to_host(d_roff, static_cast<size_t>(R) + 1, "rank offsets");
      bool bad6 = false;
      for (int q = 0; q <= R; ++q)
        bad6 = bad6 || roff[static_cast<size_t>(q)] != pk.rank_offset[static_cast<size_t>(q)];
      mismatch(6, bad6, "rank offsets differ");
      const auto pd = ref::pack_by_rank(nullptr, T, 0, got, cpos, E, R, true);
      const auto droff = dev_.to_host(d_droff, static_cast<size_t>(R) + 1, "dedup rank offsets");
      const auto tok = dev_.to_host(d_tok, pd.token_of_row.size(), "dedup tokens");
      bool bad7 = false;
      for (int q = 0; q <= R; ++q)
        bad7 = bad7 || droff[static_cast<size_t>(q)] != pd.rank_offset[static_cast<size_t>(q)];
      for (size_t i = 0; i < tok.size(); ++i) bad7 = bad7 || tok[i] != pd.token_of_row[i];
      std::vector<int64_t> prow, ptok;
      for (int64_t row : sample_indices(static_cast<int64_t>(pd.token_of_row.size()), kRowSample, c.seed ^ 0x33)) {
        prow.push_back(row);
        ptok.push_back(pd.token_of_row[static_cast<size_t>(row)]);
      }
      std::vector<uint16_t> pg(prow.size() * static_cast<size_t>(H)), xg(pg.size());
      dev_.rows_to_host(pg.data(), d_pack, prow, rowb, rowb, "dedup rows");
      dev_.rows_to_host(xg.data(), d_x, ptok, rowb, rowb, "token rows");
      mismatch(7, bad7 || pg != xg, "dedup offsets, tokens or rows differ");
    }
    {
      std::vector<int> order(static_cast<size_t>(S));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return got.expert[static_cast<size_t>(a)] < got.expert[static_cast<size_t>(b)];
      });
      mismatch(8, dev_.to_host(d_sslot, S, "sorted slots") != order, "sorted slots differ");
    }
  }
  set_current(nullptr, nullptr, "", "");
  char cfg[96];
  std::snprintf(cfg, sizeof cfg, "gate=%s groups=%d/%d cf=%g C=%lld R=%d", sig ? "sigmoid_bias" : "softmax",
                r.num_groups, r.topk_group, r.capacity_factor, static_cast<long long>(C), R);
  std::vector<size_t> order(stages.size());
  std::iota(order.begin(), order.end(), 0);
  Rng rng(c.seed ^ 0x1234ull);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[static_cast<size_t>(rng.below(i))]);
  for (size_t i : order) {
    const std::string& impl = stages[i].first;
    if (!enabled(impl)) continue;
    const CheckResult pre{status[i] == "ok", err[i], note[i]};
    if (status[i] == "error") {
      write_rows(base, impl, cfg, "error", NAN, {}, note[i]);
      continue;
    }
    measure(c, base, impl, cfg, stages[i].second, [&] { return pre; });
  }
}

}  // namespace moesim::vk
