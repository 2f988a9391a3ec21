#include "validation_kernels/reference/routing_ref.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>

namespace moesim::vk::ref {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("moesim::vk::ref: ") + what);
}

/// Indices 0..n-1 ordered by descending score, ties by lower index: the one ordering rule used by
/// every top-k in this file, so GPU kernels have a single rule to match.
template <class T>
std::vector<int> order_desc(const std::vector<T>& score, const std::vector<uint8_t>& allowed) {
  std::vector<int> idx;
  for (int i = 0; i < static_cast<int>(score.size()); ++i)
    if (allowed[static_cast<size_t>(i)]) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int a, int b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  return idx;
}

}  // namespace

void check_gate_config(const GateConfig& config) {
  const int e_count = config.num_experts;
  const int k = config.topk;
  require(e_count > 0, "num_experts must be > 0");
  require(k > 0 && k <= e_count, "topk must be in [1, num_experts]");
  require(config.num_groups >= 1 && e_count % config.num_groups == 0, "num_groups must divide num_experts");
  require(config.topk_group >= 1 && config.topk_group <= config.num_groups, "topk_group out of range");
  const int group_size = e_count / config.num_groups;
  if (config.num_groups > 1) {
    require(config.topk_group * group_size >= k, "topk_group groups hold fewer than topk experts");
    if (config.kind == GateKind::kSigmoidBias) require(group_size >= 2, "sigmoid group score needs >= 2 per group");
  }
}

template <class T>
void select_experts(const T* score, const T* weight, const float* bias, const GateConfig& config, int32_t* expert,
                    float* out_weight, float* out_score) {
  const auto E = static_cast<size_t>(config.num_experts);
  const int k = config.topk;
  const bool sigmoid = config.kind == GateKind::kSigmoidBias;
  std::vector<T> key(E);
  for (size_t e = 0; e < E; ++e) key[e] = sigmoid ? score[e] + (bias ? static_cast<T>(bias[e]) : T(0)) : score[e];
  std::vector<uint8_t> allowed(E, 1);
  if (config.num_groups > 1) {
    // Group score: sum of the top-2 keys (DeepSeek-V3, sigmoid) or the max (DeepSeek-V2, softmax).
    const auto G = static_cast<size_t>(config.num_groups);
    const size_t group_size = E / G;
    std::vector<T> gscore(G);
    for (size_t g = 0; g < G; ++g) {
      std::vector<T> s(key.begin() + static_cast<std::ptrdiff_t>(g * group_size),
                       key.begin() + static_cast<std::ptrdiff_t>((g + 1) * group_size));
      std::sort(s.begin(), s.end(), std::greater<T>());
      gscore[g] = sigmoid ? s[0] + s[1] : s[0];
    }
    const std::vector<int> gorder = order_desc(gscore, std::vector<uint8_t>(G, 1));
    std::vector<uint8_t> gkeep(G, 0);
    for (int i = 0; i < config.topk_group; ++i) gkeep[static_cast<size_t>(gorder[static_cast<size_t>(i)])] = 1;
    for (size_t e = 0; e < E; ++e) allowed[e] = gkeep[e / group_size];
  }
  const std::vector<int> order = order_desc(key, allowed);
  double wsum = 0;
  for (int j = 0; j < k; ++j) wsum += static_cast<double>(weight[static_cast<size_t>(order[static_cast<size_t>(j)])]);
  for (int j = 0; j < k; ++j) {
    const auto e = static_cast<size_t>(order[static_cast<size_t>(j)]);
    double w = static_cast<double>(weight[e]);
    if (config.renormalize) w /= wsum;
    w *= config.weight_scale;
    expert[j] = static_cast<int32_t>(e);
    out_weight[j] = static_cast<float>(w);
    out_score[j] = static_cast<float>(key[e]);
  }
}

template void select_experts<float>(const float*, const float*, const float*, const GateConfig&, int32_t*, float*,
                                    float*);
template void select_experts<double>(const double*, const double*, const float*, const GateConfig&, int32_t*, float*,
                                     float*);

Routing gate_topk(const float* logits, int64_t tokens, const GateConfig& config, const float* bias) {
  check_gate_config(config);
  require(tokens >= 0, "tokens must be >= 0");
  const int k = config.topk;
  Routing r;
  r.tokens = tokens;
  r.topk = k;
  r.expert.resize(static_cast<size_t>(tokens * k));
  r.weight.resize(r.expert.size());
  r.score.resize(r.expert.size());

  const auto E = static_cast<size_t>(config.num_experts);
  std::vector<double> weight(E);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = logits + static_cast<size_t>(t) * E;
    if (config.kind == GateKind::kSoftmax) {
      double mx = row[0];
      for (size_t e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(row[e]));
      double sum = 0;
      for (size_t e = 0; e < E; ++e) sum += (weight[e] = std::exp(static_cast<double>(row[e]) - mx));
      for (size_t e = 0; e < E; ++e) weight[e] /= sum;
    } else {
      for (size_t e = 0; e < E; ++e) weight[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
    }
    const auto slot = static_cast<size_t>(t * k);
    select_experts<double>(weight.data(), weight.data(), bias, config, &r.expert[slot], &r.weight[slot],
                           &r.score[slot]);
  }
  return r;
}

int64_t capacity_for(int64_t tokens, int topk, int num_experts, double capacity_factor, int64_t min_capacity) {
  require(tokens >= 0 && topk > 0 && num_experts > 0, "capacity_for: bad tokens/topk/num_experts");
  if (!(capacity_factor > 0)) return kNoCapacityLimit;
  const long double x = static_cast<long double>(capacity_factor) * static_cast<long double>(tokens) *
                        static_cast<long double>(topk) / static_cast<long double>(num_experts);
  const long double nearest = std::nearbyint(x);
  const long double snapped = std::fabs(x - nearest) <= 1e-9L * std::max(1.0L, x) ? nearest : x;
  const auto c = static_cast<int64_t>(std::ceil(snapped));
  return std::max(min_capacity, c);
}

std::vector<int64_t> histogram(const int32_t* expert_ids, int64_t n, int num_experts) {
  std::vector<int64_t> h(static_cast<size_t>(num_experts), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = expert_ids[i];
    if (e >= 0 && e < num_experts) ++h[static_cast<size_t>(e)];
  }
  return h;
}

std::vector<int64_t> histogram(const std::vector<int32_t>& expert_ids, int num_experts) {
  return histogram(expert_ids.data(), static_cast<int64_t>(expert_ids.size()), num_experts);
}

Scan exclusive_scan(const std::vector<int64_t>& counts, int64_t block_rows) {
  require(block_rows >= 1, "block_rows must be >= 1");
  Scan s;
  s.offset.assign(counts.size() + 1, 0);
  s.padded_count.resize(counts.size());
  for (size_t e = 0; e < counts.size(); ++e) {
    require(counts[e] >= 0, "negative count");
    s.padded_count[e] = (counts[e] + block_rows - 1) / block_rows * block_rows;
    s.padding_rows += s.padded_count[e] - counts[e];
    s.offset[e + 1] = s.offset[e] + s.padded_count[e];
  }
  return s;
}

Capacity enforce_capacity(const Routing& routing, int num_experts, int64_t capacity, DropPolicy policy) {
  require(capacity == kNoCapacityLimit || capacity >= 0, "capacity must be >= 0 or kNoCapacityLimit");
  const int64_t tokens = routing.tokens;
  const int k = routing.topk;
  const auto n = static_cast<size_t>(tokens * k);
  require(routing.expert.size() == n && routing.weight.size() == n, "routing arrays have the wrong size");
  const auto E = static_cast<size_t>(num_experts);

  Capacity c;
  c.capacity = capacity;
  c.position_in_expert.assign(n, -1);
  c.keep.assign(n, 0);
  c.routed_count.assign(E, 0);
  c.kept_count.assign(E, 0);
  c.fully_dropped.assign(static_cast<size_t>(tokens), 0);

  // Slots of each expert in token order (slot index order is token-major, so a plain scan is stable).
  std::vector<std::vector<size_t>> by_expert(E);
  for (size_t s = 0; s < n; ++s) {
    const int32_t e = routing.expert[s];
    if (e == kNoExpert) continue;
    require(e >= 0 && e < num_experts, "expert id out of range");
    by_expert[static_cast<size_t>(e)].push_back(s);
  }
  for (size_t e = 0; e < E; ++e) {
    std::vector<size_t>& slots = by_expert[e];
    c.routed_count[e] = static_cast<int64_t>(slots.size());
    const size_t limit =
        capacity == kNoCapacityLimit ? slots.size() : std::min(slots.size(), static_cast<size_t>(capacity));
    if (policy == DropPolicy::kPosition || limit == slots.size()) {
      for (size_t i = 0; i < limit; ++i) c.keep[slots[i]] = 1;
    } else {
      std::vector<size_t> by_weight = slots;
      std::stable_sort(by_weight.begin(), by_weight.end(),
                       [&](size_t a, size_t b) { return routing.weight[a] > routing.weight[b]; });
      for (size_t i = 0; i < limit; ++i) c.keep[by_weight[i]] = 1;
    }
    int32_t pos = 0;
    for (size_t s : slots)
      if (c.keep[s]) c.position_in_expert[s] = pos++;
    c.kept_count[e] = pos;
    c.dropped_assignments += static_cast<int64_t>(slots.size()) - pos;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    bool any = false;
    for (int j = 0; j < k; ++j) any = any || c.keep[static_cast<size_t>(t * k + j)];
    if (!any && k > 0) {
      c.fully_dropped[static_cast<size_t>(t)] = 1;
      ++c.fully_dropped_tokens;
    }
  }
  return c;
}

namespace {

PermuteLayout layout_from_offsets(const Routing& routing, const Capacity& capacity, int num_experts,
                                  std::vector<int64_t> offset) {
  PermuteLayout l;
  l.num_experts = num_experts;
  l.expert_offset = std::move(offset);
  l.total_rows = l.expert_offset.back();
  l.token_of_row.assign(static_cast<size_t>(l.total_rows), -1);
  l.row_of_slot.assign(routing.expert.size(), -1);
  for (size_t s = 0; s < routing.expert.size(); ++s) {
    if (!capacity.keep[s]) continue;
    const auto e = static_cast<size_t>(routing.expert[s]);
    const int64_t row = l.expert_offset[e] + capacity.position_in_expert[s];
    require(row < l.expert_offset[e + 1], "kept position does not fit the expert's rows");
    l.row_of_slot[s] = row;
    l.token_of_row[static_cast<size_t>(row)] = static_cast<int64_t>(s) / routing.topk;
  }
  int64_t kept = 0;
  for (int64_t v : capacity.kept_count) kept += v;
  l.padding_rows = l.total_rows - kept;
  return l;
}

}  // namespace

PermuteLayout contiguous_layout(const Routing& routing, const Capacity& capacity, int num_experts, int64_t block_rows) {
  require(static_cast<int>(capacity.kept_count.size()) == num_experts, "capacity has the wrong expert count");
  return layout_from_offsets(routing, capacity, num_experts, exclusive_scan(capacity.kept_count, block_rows).offset);
}

PermuteLayout masked_layout(const Routing& routing, const Capacity& capacity, int num_experts, int64_t cap) {
  require(cap >= 0, "cap must be >= 0");
  std::vector<int64_t> offset(static_cast<size_t>(num_experts) + 1);
  for (size_t e = 0; e < offset.size(); ++e) offset[e] = static_cast<int64_t>(e) * cap;
  return layout_from_offsets(routing, capacity, num_experts, std::move(offset));
}

std::vector<float> permute(const float* x, int64_t tokens, int64_t hidden, const PermuteLayout& layout) {
  std::vector<float> out(static_cast<size_t>(layout.total_rows * hidden), 0.0f);
  for (int64_t r = 0; r < layout.total_rows; ++r) {
    const int64_t t = layout.token_of_row[static_cast<size_t>(r)];
    if (t < 0) continue;
    require(t < tokens, "token index out of range");
    std::copy(x + t * hidden, x + (t + 1) * hidden, out.begin() + r * hidden);
  }
  return out;
}

std::vector<float> unpermute_combine(const float* expert_out, int64_t hidden, const Routing& routing,
                                     const PermuteLayout& layout) {
  const int k = routing.topk;
  std::vector<float> out(static_cast<size_t>(routing.tokens * hidden), 0.0f);
  std::vector<double> acc(static_cast<size_t>(hidden));
  for (int64_t t = 0; t < routing.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int j = 0; j < k; ++j) {
      const auto s = static_cast<size_t>(t * k + j);
      const int64_t row = layout.row_of_slot[s];
      if (row < 0) continue;
      const double w = routing.weight[s];
      for (int64_t h = 0; h < hidden; ++h) acc[static_cast<size_t>(h)] += w * expert_out[row * hidden + h];
    }
    for (int64_t h = 0; h < hidden; ++h)
      out[static_cast<size_t>(t * hidden + h)] = static_cast<float>(acc[static_cast<size_t>(h)]);
  }
  return out;
}

int owner_rank(int expert, int num_experts, int ranks) {
  require(ranks >= 1 && ranks <= num_experts, "ranks must be in [1, num_experts]");
  require(expert >= 0 && expert < num_experts, "expert out of range");
  // Largest r with floor(r*E/R) <= expert.
  int r = static_cast<int>((static_cast<int64_t>(expert) * ranks + ranks - 1) / num_experts);
  while (r > 0 && static_cast<int64_t>(r) * num_experts / ranks > expert) --r;
  while (r + 1 < ranks && static_cast<int64_t>(r + 1) * num_experts / ranks <= expert) ++r;
  return r;
}

RankPacking pack_by_rank(const float* x, int64_t tokens, int64_t hidden, const Routing& routing,
                         const Capacity& capacity, int num_experts, int ranks, bool dedup) {
  RankPacking p;
  p.ranks = ranks;
  const int k = routing.topk;
  const auto R = static_cast<size_t>(ranks);
  std::vector<std::vector<int64_t>> tok(R);
  std::vector<std::vector<int32_t>> dest_expert(R);
  if (dedup) {
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<uint8_t> seen(R, 0);
      for (int j = 0; j < k; ++j) {
        const auto s = static_cast<size_t>(t * k + j);
        if (!capacity.keep[s]) continue;
        seen[static_cast<size_t>(owner_rank(routing.expert[s], num_experts, ranks))] = 1;
      }
      for (size_t r = 0; r < R; ++r)
        if (seen[r]) {
          tok[r].push_back(t);
          dest_expert[r].push_back(-1);
        }
    }
  } else {
    const PermuteLayout l = contiguous_layout(routing, capacity, num_experts, 1);
    std::vector<int32_t> expert_of_row(static_cast<size_t>(l.total_rows), -1);
    for (size_t s = 0; s < routing.expert.size(); ++s)
      if (l.row_of_slot[s] >= 0) expert_of_row[static_cast<size_t>(l.row_of_slot[s])] = routing.expert[s];
    for (int64_t row = 0; row < l.total_rows; ++row) {
      const int32_t e = expert_of_row[static_cast<size_t>(row)];
      const auto r = static_cast<size_t>(owner_rank(e, num_experts, ranks));
      tok[r].push_back(l.token_of_row[static_cast<size_t>(row)]);
      dest_expert[r].push_back(e);
    }
  }
  p.rank_rows.resize(R);
  p.rank_offset.assign(R + 1, 0);
  for (size_t r = 0; r < R; ++r) {
    p.rank_rows[r] = static_cast<int64_t>(tok[r].size());
    p.rank_offset[r + 1] = p.rank_offset[r] + p.rank_rows[r];
    p.token_of_row.insert(p.token_of_row.end(), tok[r].begin(), tok[r].end());
    p.expert_of_row.insert(p.expert_of_row.end(), dest_expert[r].begin(), dest_expert[r].end());
  }
  p.packed.resize(p.token_of_row.size() * static_cast<size_t>(hidden));
  for (size_t row = 0; row < p.token_of_row.size(); ++row) {
    const int64_t t = p.token_of_row[row];
    std::copy(x + t * hidden, x + (t + 1) * hidden, p.packed.begin() + static_cast<std::ptrdiff_t>(row) * hidden);
  }
  return p;
}

std::vector<float> grouped_gemm(const float* a, const float* w, const std::vector<int64_t>& expert_offset, int64_t n,
                                int64_t k) {
  require(!expert_offset.empty(), "expert_offset must have E+1 entries");
  const int64_t rows = expert_offset.back();
  std::vector<float> out(static_cast<size_t>(rows * n), 0.0f);
  for (size_t e = 0; e + 1 < expert_offset.size(); ++e) {
    const float* we = w + static_cast<int64_t>(e) * n * k;
    for (int64_t r = expert_offset[e]; r < expert_offset[e + 1]; ++r) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(a[r * k + i]) * we[j * k + i];
        out[static_cast<size_t>(r * n + j)] = static_cast<float>(acc);
      }
    }
  }
  return out;
}

}  // namespace moesim::vk::ref
