#include "engine/memory_model.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "engine/pipeline.hpp"

namespace moesim::engine {

LayerParams layer_params(const models::ModelSpec& m, int layer) {
  const models::ParamCount pc = models::count_params(m);
  const std::int64_t L = m.num_layers();
  LayerParams p;
  p.attention = pc.total.attention / L;
  // Final norm(s) belong to no layer; the per-layer norms are the rest.
  const std::int64_t final_norms = (m.architecture == models::Architecture::kEncoderDecoder ? 2 : 1) *
                                   (m.norm == models::NormKind::kLayerNorm ? 2 * m.hidden : m.hidden);
  p.norms = (pc.total.norms - final_norms) / L;
  if (m.moe_layer[static_cast<std::size_t>(layer)]) {
    const std::int64_t moe = m.num_moe_layers();
    p.router = pc.total.router / moe;
    p.shared_experts = pc.total.shared_experts / moe;
    p.per_expert = pc.expert_params;
    p.experts = m.experts;
  } else {
    p.dense_ffn = m.ffn_params(m.dense_ffn);
  }
  return p;
}

MicroBatchShape micro_batch_shape(const Scenario& s) {
  MicroBatchShape b;
  const auto& w = s.workload;
  const auto& par = s.parallel;
  switch (w.mode) {
    case WorkloadMode::kTrain: {
      b.train = true;
      b.micro_batches = par.micro_batches;
      const std::int64_t groups = std::int64_t{par.dp} * par.micro_batches;
      if (par.cp > 1) {
        // Whole sequences per DP group; each CP rank holds 1/cp of every one (parse_scenario
        // checks the splits).
        if (w.global_batch % groups != 0 || w.seq_len % par.cp != 0)
          throw std::invalid_argument(
              fmt::format("{} sequences of {} tokens do not split over dp x micro_batches = "
                          "{} and cp = {}",
                          w.global_batch, w.seq_len, groups, par.cp));
        b.seqs = w.global_batch / groups;
        b.q_len = w.seq_len / par.cp;
        b.kv_len = w.seq_len;
        b.context_shards = par.cp;
        b.tokens = b.seqs * b.q_len;
        b.causal = true;
        break;
      }
      if (w.tokens_per_step() % groups != 0)
        throw std::invalid_argument(
            fmt::format("{} tokens per step do not split over dp x micro_batches = {}", w.tokens_per_step(), groups));
      b.tokens = w.tokens_per_step() / groups;
      if (w.seq_len > 0 && b.tokens % w.seq_len == 0) {
        b.seqs = b.tokens / w.seq_len;
        b.q_len = w.seq_len;
      } else {
        b.seqs = 1;
        b.q_len = b.tokens;
      }
      b.kv_len = b.q_len;
      b.causal = true;
      break;
    }
    case WorkloadMode::kPrefill:
    case WorkloadMode::kDecode: {
      if (w.batch % par.dp != 0)
        throw std::invalid_argument(fmt::format("batch {} does not split over dp {}", w.batch, par.dp));
      b.seqs = w.batch / par.dp;
      if (w.mode == WorkloadMode::kPrefill) {
        b.q_len = w.prompt_len / par.cp;
        b.kv_len = w.prompt_len;
        b.context_shards = par.cp;
        b.causal = true;
      } else {
        b.q_len = 1;
        b.kv_len = w.context_len + 1;
        b.causal = false;
      }
      b.tokens = b.seqs * b.q_len;
      break;
    }
    default:
      throw std::invalid_argument(fmt::format("workload mode '{}' has no step graph", to_string(w.mode)));
  }
  if (b.tokens <= 0) throw std::invalid_argument("a micro-batch has no tokens");
  if (b.tokens % par.tp != 0)
    throw std::invalid_argument(fmt::format(
        "{} tokens per micro-batch do not split over tp {} (sequence-parallel MoE input)", b.tokens, par.tp));
  b.moe_tokens = b.tokens / par.tp;
  return b;
}

namespace {

/// Bytes of K and V cached per token per layer on one GPU.
std::int64_t kv_bytes_per_token(const models::ModelSpec& m, int tp) {
  const std::int64_t b = m.bytes_per_param;
  if (m.attention == models::AttentionKind::kMla) return (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * b;
  const std::int64_t kv_heads_local = std::max<std::int64_t>(1, (m.kv_heads + tp - 1) / tp);
  return 2 * kv_heads_local * m.head_dim * b;
}

/// Query/key/value widths of the attention projections (whole model, before TP split).
struct AttnDims {
  std::int64_t q, k, v, out;
};
AttnDims attn_dims(const models::ModelSpec& m) {
  if (m.attention == models::AttentionKind::kMla) {
    const std::int64_t qk = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim;
    return {m.heads * qk, m.heads * qk, std::int64_t{m.heads} * m.mla.v_head_dim,
            std::int64_t{m.heads} * m.mla.v_head_dim};
  }
  return {std::int64_t{m.heads} * m.head_dim, std::int64_t{m.kv_heads} * m.head_dim,
          std::int64_t{m.kv_heads} * m.head_dim, std::int64_t{m.heads} * m.head_dim};
}

}  // namespace

MemoryEstimate estimate_memory(const Scenario& s, const MemoryOptions& opt) {
  const models::ModelSpec& m = s.model;
  const RankLayout lay(s.parallel);
  const MicroBatchShape mb = micro_batch_shape(s);
  const auto vranges = virtual_stage_ranges(pipeline_stage_layers(s.parallel, m.num_layers()));
  const double tp = lay.tp, dp = lay.dp, ep = lay.ep;
  const double edp = lay.expert_dp();
  const double bpp = m.bytes_per_param;
  const double h = static_cast<double>(m.hidden);
  const double T = static_cast<double>(mb.tokens), Tr = static_cast<double>(mb.moe_tokens);
  const AttnDims ad = attn_dims(m);
  const double ffn_mats = m.is_gated() ? 2.0 : 1.0;  // GEMM1 output width multiplier
  const double k = m.top_k;

  // Activation bytes one layer keeps for its backward, per micro-batch (bf16 tensors, fp32 router
  // probabilities and attention log-sum-exp), by the module that produces them so that
  // selective recomputation can drop exactly what it re-creates:
  //   always    the layer input and the post-attention residual (2 x T/tp x h), the router
  //             probabilities, the attention-input latents of MLA
  //   layernorm the two norm outputs (2 x T/tp x h)
  //   q, k, v   after the projections (dropped by mla_up_proj: MLA keeps only its latents)
  //   core_attn the attention output and log-sum-exp
  //   moe       permuted rows, fc1 output, activation output, fc2 output (moe_act: the
  //             activation output); shared experts' intermediates (shared_experts)
  //   mlp       dense layers' fc1 output and activation output
  const WorkloadSpec& w = s.workload;
  const auto drop = [&](RecomputeModule mod) { return w.recomputes(mod); };
  const bool mla = m.attention == models::AttentionKind::kMla;
  const auto layer_act = [&](int l) {
    double a = 2.0 * 2.0 * Tr * h;                                    // input and post-attention residual
    if (!drop(RecomputeModule::kLayernorm)) a += 2.0 * 2.0 * Tr * h;  // the two norm outputs
    if (mla) {
      a += 2.0 * T * static_cast<double>(m.mla.q_lora_rank + m.mla.kv_lora_rank + m.mla.qk_rope_head_dim);
      if (!drop(RecomputeModule::kMlaUpProj)) a += 2.0 * T * (ad.q + ad.k + ad.v) / tp;
    } else {
      a += 2.0 * T * (ad.q + ad.k + ad.v) / tp;
    }
    if (!drop(RecomputeModule::kCoreAttn)) a += 2.0 * T * ad.out / tp + 4.0 * T * m.heads / tp;
    if (m.moe_layer[static_cast<std::size_t>(l)]) {
      if (drop(RecomputeModule::kMoe)) return a;
      const double F = static_cast<double>(m.expert_ffn);
      const double rows = Tr * k;
      a += 4.0 * Tr * m.experts;
      a += rows * (2.0 * h + 2.0 * ffn_mats * F + 2.0 * h);
      if (!drop(RecomputeModule::kMoeAct)) a += rows * 2.0 * F;
      const double Fs = static_cast<double>(m.shared_expert_ffn) * m.shared_experts;
      if (m.shared_experts > 0 && !drop(RecomputeModule::kSharedExperts))
        a += T * (2.0 * h / tp + (2.0 * ffn_mats * Fs + 2.0 * Fs) / tp);
    } else if (!drop(RecomputeModule::kMlp)) {
      const double F = static_cast<double>(m.dense_ffn);
      a += T * (2.0 * ffn_mats * F + 2.0 * F) / tp;
    }
    return a;
  };

  MemoryEstimate est;
  est.capacity_bytes = opt.capacity_bytes;
  const double dense_shard = opt.zero_stage >= 1 ? dp : 1.0;
  const double expert_shard = opt.zero_stage >= 1 ? edp : 1.0;
  for (int st = 0; st < lay.pp; ++st) {
    StageMemory sm;
    sm.stage = st;
    double dense = 0, expert = 0, act_full = 0, act_inputs = 0, act_max_layer = 0;
    double layers = 0;
    // Largest FSDP unit (layer, embedding, head): its local params that a shard group of more
    // than one rank divides (a group of one holds them whole, nothing to gather or scatter).
    double unit_max = 0;
    const double dense_split = dense_shard > 1 ? 1.0 : 0.0, expert_split = expert_shard > 1 ? 1.0 : 0.0;
    for (std::size_t v = static_cast<std::size_t>(st); v < vranges.size(); v += static_cast<std::size_t>(lay.pp))
      for (int l = vranges[v].first; l < vranges[v].second; ++l) {
        ++layers;
        const LayerParams p = layer_params(m, l);
        dense += static_cast<double>(p.dense_local(lay.tp));
        expert += static_cast<double>(p.per_expert) * p.experts / ep;
        unit_max = std::max(unit_max, dense_split * static_cast<double>(p.dense_local(lay.tp)) +
                                          expert_split * static_cast<double>(p.per_expert) * p.experts / ep);
        const double a = layer_act(l);
        act_full += a;
        act_inputs += 2.0 * Tr * h;
        act_max_layer = std::max(act_max_layer, a);
      }
    const double table = static_cast<double>(m.vocab) * h / tp;
    if (st == 0) {
      dense += table;
      unit_max = std::max(unit_max, dense_split * table);
    }
    if (st == lay.pp - 1) {
      if (!m.tied_embeddings || lay.pp > 1) {
        dense += table;
        unit_max = std::max(unit_max, dense_split * table);
      }
      dense += h;                                               // final norm
      act_full += 4.0 * T * static_cast<double>(m.vocab) / tp;  // fp32 logits for the loss
      act_max_layer = std::max(act_max_layer, 4.0 * T * static_cast<double>(m.vocab) / tp);
    }
    // What one GPU keeps of the stage's params once the shard groups divide them, and the part
    // of that which is a copy beside unsharded params (groups of more than one rank).
    const double sharded = dense / dense_shard + expert / expert_shard;
    const double shard_copies = dense_split * dense / dense_shard + expert_split * expert / expert_shard;
    const bool zero3 = mb.train && opt.zero_stage == 3;
    if (!zero3)
      sm.weights = (dense + expert) * bpp;
    else if (opt.param_gather == ParamGather::kPerUse)
      sm.weights = (sharded + 2.0 * unit_max) * bpp;
    else
      sm.weights = (dense + expert + shard_copies) * bpp;
    const double comm_rows = Tr * k;
    sm.comm_buffers =
        m.num_moe_layers() > 0
            ? 2.0 * comm_rows * static_cast<double>(models::row_bytes(m.hidden, opt.dispatch_format)) +
                  2.0 * comm_rows * static_cast<double>(models::row_bytes(m.hidden, models::WireFormat::kBf16))
            : 0.0;
    if (mb.train) {
      // ZeRO-2/3 reducing every micro-batch keep the shards plus the unit being reduced; otherwise
      // grads accumulate unsharded (with grad_sync per_step each unit's shard replaces them as the
      // last backward reduces it).
      if (opt.zero_stage >= 2 && opt.grad_sync == GradSync::kPerMicroBatch)
        sm.grads = (sharded + unit_max) * opt.grad_bytes;
      else
        sm.grads = (dense + expert) * opt.grad_bytes;
      sm.optimizer = opt.optimizer_state_bytes * sharded;
      // Forward (micro-batch, chunk) pairs stashed at the peak (pipeline_inflight_chunks), each
      // holding 1/vpp of the stage's layers (the average chunk).
      const double inflight =
          static_cast<double>(pipeline_inflight_chunks(lay.pp, s.parallel.vpp, mb.micro_batches, st)) / s.parallel.vpp;
      sm.activations_no_recompute = inflight * act_full;
      sm.activations_recompute = inflight * act_inputs + act_max_layer;
      sm.activations = s.workload.recompute ? sm.activations_recompute : sm.activations_no_recompute;
    } else {
      sm.activations = act_max_layer;  // inference keeps no stash, one layer's working set
      sm.activations_no_recompute = sm.activations_recompute = sm.activations;
      // Each context-parallel rank caches the keys of its own share of the prompt.
      sm.kv_cache = static_cast<double>(mb.seqs) * static_cast<double>(mb.kv_len / mb.context_shards) * layers *
                    static_cast<double>(kv_bytes_per_token(m, lay.tp));
    }
    if (sm.total() > est.peak_bytes) {
      est.peak_bytes = sm.total();
      est.peak_stage = st;
    }
    est.stages.push_back(sm);
  }
  est.fits = est.peak_bytes <= est.capacity_bytes;
  return est;
}

}  // namespace moesim::engine
