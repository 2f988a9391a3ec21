#pragma once
/// \file
/// Pipeline layouts and schedules: which layers each (virtual) stage holds and in which order a
/// rank runs its forward and backward passes.
///
/// Virtual stages (Megatron-Core's interleaved 1F1B, `parallel.vpp`): the layers are cut into
/// V = pp * vpp consecutive model chunks; chunk v runs on rank v % pp as that rank's local chunk
/// v / pp. A micro-batch's forward visits v = 0, 1, ..., V-1 (so it passes every rank vpp times)
/// and its backward the reverse. vpp = 1 is the plain 1F1B pipeline.
///
/// Layout strings (`parallel.pipeline_layout`, Megatron-Core's `--pipeline-model-parallel-layout`):
///   E  the embedding (must open the first virtual stage)
///   t  one decoder layer
///   m  one multi-token-prediction layer (not modelled: rejected)
///   L  the loss / LM head (must close the last virtual stage)
///   |  ends a virtual stage
///   X*N and (...)*N repeat a symbol or a group N times; ',' and spaces are ignored.
/// E.g. "Et*3|(tt|)*29,m|L" is DeepSeek-V3's PP16 VPP2 split (61 layers + MTP). The string must
/// give exactly pp * vpp stages and as many t as the model has layers; a stage may hold none.
///
/// Without a layout the layers split evenly: vpp = 1 gives the first stages the remainder (as
/// before), vpp > 1 needs the layer count to be a multiple of pp * vpp (Megatron's rule), and
/// `account_for_embedding` / `account_for_loss` count the embedding / the loss as one layer of
/// the first / last virtual stage (Megatron's --account-for-{embedding,loss}-in-pipeline-split):
/// then layers + those must be a multiple of pp * vpp.
///
/// Interleaved schedule (Megatron-Core forward_backward_pipelining_with_interleaving, micro-batch
/// groups of pp): rank p's k-th forward runs local chunk (k mod pp*vpp) / pp on micro-batch
/// (k / (pp*vpp)) * pp + k mod pp; its k-th backward the same micro-batch on chunk vpp - 1 - that.
/// Rank p first runs min(M*vpp, 2(pp-p-1) + (vpp-1)pp) forwards (warm-up), then alternates one
/// forward and one backward, then drains the backwards. For vpp = 1 the warm-up is min(M, pp-p-1)
/// (plain 1F1B). Closed forms checked by tests: with equal chunk costs tf, tb the step lasts
/// M*vpp*(tf+tb) + (pp-1)(tf+tb) (bubble (pp-1)(tf+tb), i.e. 1/vpp of the 1F1B bubble in stage
/// time), and pipeline transfers are 2 (pp*vpp - 1) per micro-batch and (dp, tp) index.

#include <string>
#include <utility>
#include <vector>

namespace moesim::engine {

/// Decoder layers of each virtual stage parsed from a layout string. Throws
/// std::invalid_argument with a message naming the offending character (1-based) when the
/// string is malformed or does not match `virtual_stages` stages and `layers` layers.
std::vector<int> parse_pipeline_layout(const std::string& text, int virtual_stages, int layers);

/// Even split of `layers` over `virtual_stages` with the embedding / loss counted as one extra
/// layer of the first / last stage when asked. Throws std::invalid_argument (with the rule) when
/// it does not divide and `require_exact` (vpp > 1 or an accounting flag), or when a stage would
/// be left with no decoder layer (the first / last may hold the embedding / the loss alone).
std::vector<int> even_pipeline_split(int layers, int virtual_stages, bool embedding, bool loss, bool require_exact);

struct ParallelSpec;
/// Layers of each virtual stage of `p` for a model with `layers` layers: p.stage_layers when the
/// scenario gave a layout (validated), else the even split above. Throws std::invalid_argument.
std::vector<int> pipeline_stage_layers(const ParallelSpec& p, int layers);

/// [first, end) layer range of each virtual stage from its layer counts.
std::vector<std::pair<int, int>> virtual_stage_ranges(const std::vector<int>& counts);

struct PipelineAction {
  bool forward = true;
  int micro_batch = 0;
  int chunk = 0;  ///< local model chunk (virtual stage = chunk * pp + rank)
};

/// The order in which rank `rank` of a pp-stage pipeline with vpp chunks runs its passes over M
/// micro-batches (training: forward and backward; inference: forwards only). vpp > 1 needs M to be
/// a multiple of pp (Megatron's interleaved schedule); throws std::invalid_argument otherwise.
std::vector<PipelineAction> pipeline_schedule(int pp, int vpp, int micro_batches, int rank, bool train);

/// Forward (mb, chunk) pairs rank `rank` holds activations for at its peak: the warm-up plus one.
int pipeline_inflight_chunks(int pp, int vpp, int micro_batches, int rank);

}  // namespace moesim::engine
