#pragma once
/// \file
/// MoE model descriptions and exact parameter accounting.
///
/// A model is data: a YAML block (catalog file or an inline `model:` block in a scenario) read
/// into the plain `ModelSpec` below. Nothing downstream knows model names; every cost the
/// simulator charges is derived from these fields, so the parameter count here is the check
/// that the fields really describe the published model (totals must match the model card).
///
/// Layer indexing: layers are numbered 0..num_layers()-1; for encoder-decoder models the
/// encoder comes first (0..encoder_layers-1), then the decoder. `moe_layer[l]` says whether
/// layer l's FFN is a mixture of experts. Routing results are keyed by this global index.

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace moesim::config {
class Node;
}

namespace moesim::models {

/// Gated activations (SwiGLU/GeGLU) have three FFN matrices (gate, up, down); plain ones two.
enum class Activation { kSwiGLU, kGeGLU, kGelu, kRelu };
/// MHA/GQA/MQA are all `kGqa` with kv_heads in [1, heads]; `kMla` is DeepSeek's latent attention.
enum class AttentionKind { kGqa, kMla };
enum class Architecture { kDecoderOnly, kEncoderDecoder };
/// RMSNorm has a scale only; LayerNorm a scale and a bias.
enum class NormKind { kRmsNorm, kLayerNorm };
/// Router score function (see CONVENTIONS.md "MoE semantics").
enum class GateFunction { kSoftmax, kSigmoid };

/// Multi-head latent attention ranks (DeepSeek-V2/V3 config.json names in comments).
struct MlaSpec {
  int q_lora_rank = 0;       ///< q_lora_rank; 0 = no query compression (V2-Lite)
  int kv_lora_rank = 0;      ///< kv_lora_rank
  int qk_nope_head_dim = 0;  ///< qk_nope_head_dim
  int qk_rope_head_dim = 0;  ///< qk_rope_head_dim
  int v_head_dim = 0;        ///< v_head_dim
};

struct ModelSpec {
  std::string name;
  std::string source;  ///< citation: where the numbers come from (config.json URL, paper table)
  Architecture architecture = Architecture::kDecoderOnly;
  int encoder_layers = 0;  ///< encoder-decoder only
  int decoder_layers = 0;  ///< all layers of a decoder-only model
  std::int64_t hidden = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  AttentionKind attention = AttentionKind::kGqa;
  MlaSpec mla;
  bool qk_norm = false;         ///< per-head RMSNorm on q and k (Qwen3): 2*head_dim params/layer
  bool attention_bias = false;  ///< q/k/v/o biases (NLLB)
  bool ffn_bias = false;        ///< FFN biases, dense and experts (NLLB)
  std::int64_t vocab = 0;
  std::int64_t dense_ffn = 0;          ///< intermediate size of dense (non-MoE) FFN layers
  std::int64_t expert_ffn = 0;         ///< intermediate size of one routed expert
  std::int64_t shared_expert_ffn = 0;  ///< intermediate size of one shared expert
  Activation activation = Activation::kSwiGLU;
  NormKind norm = NormKind::kRmsNorm;
  int experts = 0;         ///< routed experts per MoE layer
  int shared_experts = 0;  ///< always-active experts per MoE layer
  int top_k = 0;
  std::vector<bool> moe_layer;  ///< [num_layers()]
  bool tied_embeddings = false;
  std::string dtype = "bf16";
  int bytes_per_param = 2;
  // Router as the model's own config defines it; routing: blocks may override.
  GateFunction gate = GateFunction::kSoftmax;
  bool router_bias = false;  ///< e_score_correction_bias (DeepSeek-V3): E params per MoE layer
  bool renormalize = false;  ///< norm_topk_prob
  int n_groups = 1;          ///< n_group (group-limited routing); 1 = off
  int topk_group = 1;        ///< topk_group
  double routed_scaling_factor = 1.0;
  /// Published figures, only for display next to our count (`moesim describe models`).
  std::optional<double> published_total;
  std::optional<double> published_active;

  int num_layers() const { return encoder_layers + decoder_layers; }
  int num_moe_layers() const;
  std::vector<int> moe_layer_indices() const;
  bool is_gated() const { return activation == Activation::kSwiGLU || activation == Activation::kGeGLU; }
  /// Parameters of one FFN (dense, expert or shared expert) with intermediate size `ffn`.
  std::int64_t ffn_params(std::int64_t ffn) const;
};

/// Parameter counts, split so that memory and FLOP models can use the parts.
struct ParamBreakdown {
  std::int64_t embeddings = 0;      ///< input token embedding
  std::int64_t lm_head = 0;         ///< output projection; 0 when tied to the embedding
  std::int64_t attention = 0;       ///< self- and cross-attention projections (and MLA norms)
  std::int64_t dense_ffn = 0;       ///< FFNs of non-MoE layers
  std::int64_t router = 0;          ///< gate matrices (and score-correction biases)
  std::int64_t experts = 0;         ///< all routed experts of all MoE layers
  std::int64_t shared_experts = 0;  ///< shared experts of all MoE layers
  std::int64_t norms = 0;           ///< layer norms (incl. final norm of each stack)
  std::int64_t sum() const {
    return embeddings + lm_head + attention + dense_ffn + router + experts + shared_experts + norms;
  }
};

struct ParamCount {
  ParamBreakdown total;
  /// What one token reads: everything except the (E - k)/E of routed experts it skips.
  ParamBreakdown active;
  std::int64_t params_total() const { return total.sum(); }
  std::int64_t params_active() const { return active.sum(); }
  /// Active minus the input-embedding lookup (a gather, no FLOPs). Matches DeepSeek-V2's "21B"
  /// (20.85B) and V3's "37B" (36.63B) after rounding; Mistral and Qwen count the embedding as
  /// active. See models/README.md, Parameter accounting.
  std::int64_t params_active_no_input_embedding() const { return active.sum() - active.embeddings; }
  /// Total minus embeddings and LM head (Qwen's "non-embedding" figure).
  std::int64_t params_non_embedding() const { return total.sum() - total.embeddings - total.lm_head; }
  /// Bytes of one routed expert's weights (for placement and memory).
  std::int64_t expert_params = 0;
};

/// Exact count from the spec's fields (no rounding). Throws std::invalid_argument on a spec
/// that parse_model would have rejected (e.g. a hand-built spec with zero hidden size).
ParamCount count_params(const ModelSpec& spec);

/// Read a model block. Keys (defaults in brackets):
///   name, source, architecture [decoder_only | encoder_decoder], layers (decoder-only) or
///   encoder_layers + decoder_layers, hidden, heads, kv_heads [heads], head_dim [hidden/heads],
///   attention [gqa | mla] with mla: {q_lora_rank [0], kv_lora_rank, qk_nope_head_dim,
///   qk_rope_head_dim, v_head_dim}, qk_norm [false], attention_bias [false], ffn_bias [false],
///   vocab, dense_ffn, expert_ffn, shared_expert_ffn [expert_ffn], activation [swiglu | geglu |
///   gelu | relu], norm [rmsnorm | layernorm], experts, shared_experts [0], top_k,
///   moe_layers [all | {every: N, offset: M} | {first_dense: N} | [list]] (per stack for
///   encoder-decoder), tied_embeddings [false], dtype [bf16 | fp16 | fp32 | fp8],
///   router: {gate [softmax|sigmoid], bias [false], renormalize [false], n_groups [1],
///   topk_group [1], scaling_factor [1]}, published: {total, active} (numbers, for display).
/// Problems go to the node's Diagnostics; the caller throws with throw_if_any().
ModelSpec parse_model(const config::Node& node);

/// Every *.yaml file of `dir` (sorted by file name), one model per file. Duplicate names are
/// errors. Throws config::ConfigError listing every problem.
std::vector<ModelSpec> load_model_catalog(const std::string& dir);
/// The catalog shipped in models/catalog: $MOESIM_DATA_DIR/models/catalog if that variable is
/// set, else <source dir>/models/catalog (compile definition MOESIM_SOURCE_DIR).
std::vector<ModelSpec> load_default_model_catalog();
std::string default_model_catalog_dir();
/// Find by name; nullptr if absent.
const ModelSpec* find_model(const std::vector<ModelSpec>& catalog, const std::string& name);

/// Table for `moesim describe models`: name, layers, hidden, experts (shared), top-k, total and
/// active parameters with the published figures beside them.
void describe_models(std::ostream& os, const std::vector<ModelSpec>& catalog);
void describe_models(std::ostream& os);
/// `moesim describe model NAME`: every field of one model and its parameter breakdown (total
/// and active per token), with the published figures and the source.
void describe_model(std::ostream& os, const ModelSpec& m);

/// "46.70B", "1.571T", "12.88M".
std::string format_params(double n);

}  // namespace moesim::models
