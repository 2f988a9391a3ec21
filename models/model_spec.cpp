#include "models/model_spec.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <ostream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "config/reader.hpp"

#ifndef MOESIM_SOURCE_DIR
#define MOESIM_SOURCE_DIR "."
#endif

namespace moesim::models {

using config::Node;
using config::Range;

int ModelSpec::num_moe_layers() const { return static_cast<int>(std::count(moe_layer.begin(), moe_layer.end(), true)); }

std::vector<int> ModelSpec::moe_layer_indices() const {
  std::vector<int> out;
  for (std::size_t l = 0; l < moe_layer.size(); ++l)
    if (moe_layer[l]) out.push_back(static_cast<int>(l));
  return out;
}

std::int64_t ModelSpec::ffn_params(std::int64_t ffn) const {
  const std::int64_t mats = is_gated() ? 3 : 2;
  std::int64_t p = mats * hidden * ffn;
  if (ffn_bias) p += (is_gated() ? 2 * ffn : ffn) + hidden;
  return p;
}

namespace {

std::int64_t attention_params(const ModelSpec& s) {
  const std::int64_t h = s.hidden;
  if (s.attention == AttentionKind::kMla) {
    const MlaSpec& m = s.mla;
    const std::int64_t qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim;
    std::int64_t p = 0;
    if (m.q_lora_rank > 0) {
      p += h * m.q_lora_rank + m.q_lora_rank;                // q_a_proj + q_a_layernorm
      p += std::int64_t{m.q_lora_rank} * s.heads * qk_head;  // q_b_proj
    } else {
      p += h * s.heads * qk_head;  // q_proj
    }
    p += h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank;  // kv_a_proj_with_mqa + kv_a_layernorm
    p += std::int64_t{m.kv_lora_rank} * s.heads * (m.qk_nope_head_dim + m.v_head_dim);  // kv_b_proj
    p += std::int64_t{s.heads} * m.v_head_dim * h;                                      // o_proj
    return p;
  }
  const std::int64_t q = std::int64_t{s.heads} * s.head_dim;
  const std::int64_t kv = std::int64_t{s.kv_heads} * s.head_dim;
  std::int64_t p = h * q + 2 * h * kv + q * h;
  if (s.attention_bias) p += q + 2 * kv + h;
  return p;
}

std::int64_t norm_params(const ModelSpec& s) { return s.norm == NormKind::kLayerNorm ? 2 * s.hidden : s.hidden; }

}  // namespace

ParamCount count_params(const ModelSpec& s) {
  if (s.hidden <= 0 || s.vocab <= 0 || s.num_layers() <= 0 || static_cast<int>(s.moe_layer.size()) != s.num_layers())
    throw std::invalid_argument("count_params: model '" + s.name + "' is incomplete");
  if (s.num_moe_layers() > 0 && (s.experts <= 0 || s.top_k <= 0 || s.top_k > s.experts))
    throw std::invalid_argument("count_params: model '" + s.name + "' has MoE layers without valid experts/top_k");
  ParamCount c;
  ParamBreakdown& t = c.total;
  t.embeddings = s.vocab * s.hidden;
  t.lm_head = s.tied_embeddings ? 0 : s.vocab * s.hidden;
  const std::int64_t attn = attention_params(s);
  const std::int64_t norm = norm_params(s);
  const std::int64_t qk_norm = s.qk_norm && s.attention == AttentionKind::kGqa ? 2 * std::int64_t{s.head_dim} : 0;
  const bool encdec = s.architecture == Architecture::kEncoderDecoder;
  c.expert_params = s.num_moe_layers() > 0 ? s.ffn_params(s.expert_ffn) : 0;
  const std::int64_t router = s.hidden * s.experts + (s.router_bias ? s.experts : 0);
  std::int64_t moe_layers = 0;
  for (int l = 0; l < s.num_layers(); ++l) {
    const bool in_decoder_of_encdec = encdec && l >= s.encoder_layers;
    t.attention += in_decoder_of_encdec ? 2 * attn : attn;  // + cross-attention
    t.norms += (in_decoder_of_encdec ? 3 : 2) * norm + (in_decoder_of_encdec ? 2 : 1) * qk_norm;
    if (s.moe_layer[static_cast<std::size_t>(l)]) {
      ++moe_layers;
      t.router += router;
      t.experts += std::int64_t{s.experts} * c.expert_params;
      t.shared_experts += std::int64_t{s.shared_experts} * s.ffn_params(s.shared_expert_ffn);
    } else {
      t.dense_ffn += s.ffn_params(s.dense_ffn);
    }
  }
  t.norms += (encdec ? 2 : 1) * norm;  // final norm of each stack
  c.active = t;
  c.active.experts = moe_layers * s.top_k * c.expert_params;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

namespace {

// Upper bounds on model dimensions: far above any published model (the largest MoE layer counts
// are ~100, widths ~20k, vocabularies ~256k, expert counts 256-1M in PEER-style layers), and low
// enough that every int field holds them and derived products (FLOPs, bytes) stay in int64 and
// double range. A value beyond one is a located error, never a truncated int.
constexpr double kMaxLayers = 4096;
constexpr double kMaxWidth = 1 << 20;
constexpr double kMaxVocab = 1 << 24;
constexpr double kMaxExperts = 1 << 20;
const Range kLayers = Range::between(1, kMaxLayers);
const Range kWidth = Range::between(1, kMaxWidth);

std::vector<bool> read_moe_layers(const Node& parent, int stack_layers, const std::string& stack) {
  std::vector<bool> out(static_cast<std::size_t>(std::max(stack_layers, 0)), true);
  if (!parent.has("moe_layers")) return out;
  const Node n = parent.child("moe_layers");
  if (n.is_scalar()) {
    const std::string v = n.as_choice({"all", "none"});
    if (v == "none") std::fill(out.begin(), out.end(), false);
    return out;
  }
  if (n.is_sequence()) {
    std::fill(out.begin(), out.end(), false);
    for (const Node& item : n.items()) {
      const auto l = item.as_int(Range::between(0, stack_layers - 1));
      if (l >= 0 && l < stack_layers) out[static_cast<std::size_t>(l)] = true;
    }
    return out;
  }
  if (n.is_map()) {
    if (n.has("first_dense")) {
      const auto k = n.req_int("first_dense", Range::between(0, stack_layers));
      for (int l = 0; l < stack_layers && l < k; ++l) out[static_cast<std::size_t>(l)] = false;
    } else {
      const auto every = n.req_int("every", Range::between(1, kMaxLayers));
      const auto offset = n.opt_int("offset", 0, Range::between(0, kMaxLayers));
      if (every >= 1)
        for (int l = 0; l < stack_layers; ++l) out[static_cast<std::size_t>(l)] = (l % every) == offset % every;
    }
    n.finish();
    return out;
  }
  n.error("expected 'all', 'none', a list of " + stack + " layer indices, {every: N, offset: M} or {first_dense: N}");
  return out;
}

}  // namespace

ModelSpec parse_model(const Node& node) {
  ModelSpec s;
  if (!node.is_map()) {
    node.error("expected a model block (a map of model fields)");
    return s;
  }
  s.name = node.req_string("name");
  s.source = node.opt_string("source", "");
  const std::string arch = node.opt_choice("architecture", {"decoder_only", "encoder_decoder"}, "decoder_only");
  s.architecture = arch == "encoder_decoder" ? Architecture::kEncoderDecoder : Architecture::kDecoderOnly;
  if (s.architecture == Architecture::kEncoderDecoder) {
    if (node.has("layers")) node.error_at("layers", "encoder_decoder models give encoder_layers and decoder_layers");
    s.encoder_layers = static_cast<int>(node.req_int("encoder_layers", kLayers));
    s.decoder_layers = static_cast<int>(node.req_int("decoder_layers", kLayers));
  } else {
    if (node.has("encoder_layers") || node.has("decoder_layers"))
      node.error("encoder_layers/decoder_layers need architecture: encoder_decoder");
    s.decoder_layers = static_cast<int>(node.req_int("layers", kLayers));
  }
  s.hidden = node.req_int("hidden", kWidth);
  s.heads = static_cast<int>(node.req_int("heads", kWidth));
  s.kv_heads = static_cast<int>(node.opt_int("kv_heads", s.heads, kWidth));
  if (s.heads > 0 && s.kv_heads > 0 && s.heads % s.kv_heads != 0)
    node.error_at("kv_heads", fmt::format("heads ({}) must be a multiple of kv_heads ({})", s.heads, s.kv_heads));
  s.head_dim = static_cast<int>(node.opt_int("head_dim", s.heads > 0 ? s.hidden / s.heads : 0, kWidth));
  const std::string attn = node.opt_choice("attention", {"gqa", "mla"}, "gqa");
  s.attention = attn == "mla" ? AttentionKind::kMla : AttentionKind::kGqa;
  if (s.attention == AttentionKind::kMla) {
    const Node m = node.child("mla");
    if (!m.defined()) {
      node.error_at("mla", "attention: mla needs an mla: {kv_lora_rank, qk_nope_head_dim, ...} block");
    } else {
      s.mla.q_lora_rank = static_cast<int>(m.opt_int("q_lora_rank", 0, Range::between(0, kMaxWidth)));
      s.mla.kv_lora_rank = static_cast<int>(m.req_int("kv_lora_rank", kWidth));
      s.mla.qk_nope_head_dim = static_cast<int>(m.req_int("qk_nope_head_dim", kWidth));
      s.mla.qk_rope_head_dim = static_cast<int>(m.req_int("qk_rope_head_dim", kWidth));
      s.mla.v_head_dim = static_cast<int>(m.req_int("v_head_dim", kWidth));
      m.finish();
    }
  } else if (node.has("mla")) {
    node.error_at("mla", "mla ranks given but attention is not 'mla'");
  }
  s.qk_norm = node.opt_bool("qk_norm", false);
  s.attention_bias = node.opt_bool("attention_bias", false);
  s.ffn_bias = node.opt_bool("ffn_bias", false);
  s.vocab = node.req_int("vocab", Range::between(1, kMaxVocab));
  const std::string act = node.opt_choice("activation", {"swiglu", "geglu", "gelu", "relu"}, "swiglu");
  s.activation = act == "swiglu"  ? Activation::kSwiGLU
                 : act == "geglu" ? Activation::kGeGLU
                 : act == "gelu"  ? Activation::kGelu
                                  : Activation::kRelu;
  s.norm = node.opt_choice("norm", {"rmsnorm", "layernorm"}, "rmsnorm") == "layernorm" ? NormKind::kLayerNorm
                                                                                       : NormKind::kRmsNorm;
  s.experts = static_cast<int>(node.opt_int("experts", 0, Range::between(0, kMaxExperts)));
  s.shared_experts = static_cast<int>(node.opt_int("shared_experts", 0, Range::between(0, kMaxExperts)));
  s.top_k = static_cast<int>(node.opt_int("top_k", s.experts > 0 ? 1 : 0, Range::between(0, kMaxExperts)));
  if (s.experts > 0 && s.top_k > s.experts)
    node.error_at("top_k", fmt::format("top_k ({}) exceeds the number of experts ({})", s.top_k, s.experts));
  if (s.experts > 0 && s.top_k < 1) node.error_at("top_k", "top_k must be at least 1 when experts > 0");

  // MoE layer pattern, per stack.
  if (s.architecture == Architecture::kEncoderDecoder) {
    auto enc = read_moe_layers(node, s.encoder_layers, "encoder");
    auto dec = read_moe_layers(node, s.decoder_layers, "decoder");
    s.moe_layer = enc;
    s.moe_layer.insert(s.moe_layer.end(), dec.begin(), dec.end());
  } else {
    s.moe_layer = read_moe_layers(node, s.decoder_layers, "decoder");
  }
  if (s.experts == 0) {
    std::fill(s.moe_layer.begin(), s.moe_layer.end(), false);
    if (node.has("moe_layers")) node.error_at("moe_layers", "moe_layers given but experts is 0");
  }
  const bool any_moe = std::count(s.moe_layer.begin(), s.moe_layer.end(), true) > 0;
  const bool any_dense = std::count(s.moe_layer.begin(), s.moe_layer.end(), false) > 0;
  s.expert_ffn = node.opt_int("expert_ffn", 0, Range::between(0, kMaxWidth));
  if (any_moe && s.expert_ffn <= 0) node.error_at("expert_ffn", "expert_ffn is required for a model with MoE layers");
  s.shared_expert_ffn = node.opt_int("shared_expert_ffn", s.expert_ffn, Range::between(0, kMaxWidth));
  s.dense_ffn = node.opt_int("dense_ffn", 0, Range::between(0, kMaxWidth));
  if (any_dense && s.dense_ffn <= 0) node.error_at("dense_ffn", "dense_ffn is required: the model has dense layers");
  s.tied_embeddings = node.opt_bool("tied_embeddings", false);
  s.dtype = node.opt_choice("dtype", {"bf16", "fp16", "fp32", "fp8"}, "bf16");
  s.bytes_per_param = s.dtype == "fp32" ? 4 : s.dtype == "fp8" ? 1 : 2;

  if (node.has("router")) {
    const Node r = node.child("router");
    s.gate = r.opt_choice("gate", {"softmax", "sigmoid"}, "softmax") == "sigmoid" ? GateFunction::kSigmoid
                                                                                  : GateFunction::kSoftmax;
    s.router_bias = r.opt_bool("bias", false);
    s.renormalize = r.opt_bool("renormalize", false);
    s.n_groups = static_cast<int>(r.opt_int("n_groups", 1, Range::between(1, kMaxExperts)));
    s.topk_group = static_cast<int>(r.opt_int("topk_group", s.n_groups, Range::between(1, kMaxExperts)));
    s.routed_scaling_factor = r.opt_double("scaling_factor", 1.0, Range::positive());
    if (s.experts > 0 && s.n_groups > 1 && s.experts % s.n_groups != 0)
      r.error_at("n_groups", fmt::format("experts ({}) must divide into n_groups ({})", s.experts, s.n_groups));
    if (s.topk_group > s.n_groups)
      r.error_at("topk_group", fmt::format("topk_group ({}) exceeds n_groups ({})", s.topk_group, s.n_groups));
    if (s.n_groups > 1 && s.experts > 0 && s.topk_group * (s.experts / s.n_groups) < s.top_k)
      r.error_at("topk_group", "the kept groups hold fewer experts than top_k");
    r.finish();
  }
  if (node.has("published")) {
    const Node p = node.child("published");
    if (p.has("total")) s.published_total = p.req_double("total", Range::positive());
    if (p.has("active")) s.published_active = p.req_double("active", Range::positive());
    p.finish();
  }
  node.finish();
  return s;
}

std::vector<ModelSpec> load_model_catalog(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    config::Diagnostics d;
    d.error(config::Location{dir, 0, 0}, "models", "model catalog directory not found");
    d.throw_if_any();
  }
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == ".yaml") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  config::Diagnostics diags;
  std::vector<ModelSpec> out;
  std::vector<config::Document> docs;
  for (const auto& f : files) {
    try {
      docs.push_back(config::Document::load_file(f));
    } catch (const config::ConfigError& e) {
      for (const auto& d : e.diagnostics()) diags.error(d.loc, d.key, d.message);
      continue;
    }
    const Node root = docs.back().root(diags);
    ModelSpec m = parse_model(root);
    if (find_model(out, m.name) != nullptr)
      root.error_at("name", "duplicate model name '" + m.name + "' in the catalog");
    out.push_back(std::move(m));
  }
  diags.throw_if_any();
  return out;
}

std::string default_model_catalog_dir() {
  if (const char* env = std::getenv("MOESIM_DATA_DIR"); env != nullptr && *env != '\0')
    return (std::filesystem::path(env) / "models" / "catalog").string();
  return (std::filesystem::path(MOESIM_SOURCE_DIR) / "models" / "catalog").string();
}

std::vector<ModelSpec> load_default_model_catalog() { return load_model_catalog(default_model_catalog_dir()); }

const ModelSpec* find_model(const std::vector<ModelSpec>& catalog, const std::string& name) {
  for (const auto& m : catalog)
    if (m.name == name) return &m;
  return nullptr;
}

std::string format_params(double n) {
  if (n >= 1e12) return fmt::format("{:.3f}T", n / 1e12);
  if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  return fmt::format("{:.0f}", n);
}

void describe_models(std::ostream& os, const std::vector<ModelSpec>& catalog) {
  os << fmt::format("{:<20} {:>6} {:>6} {:>9} {:>5} {:>4} {:>10} {:>10} {:>10} {:>10}\n", "model", "layers", "hidden",
                    "experts", "moe", "topk", "total", "(publ.)", "active", "(publ.)");
  for (const auto& m : catalog) {
    const ParamCount c = count_params(m);
    const std::string experts =
        m.shared_experts > 0 ? fmt::format("{}+{}s", m.experts, m.shared_experts) : fmt::format("{}", m.experts);
    os << fmt::format("{:<20} {:>6} {:>6} {:>9} {:>5} {:>4} {:>10} {:>10} {:>10} {:>10}\n", m.name, m.num_layers(),
                      m.hidden, experts, m.num_moe_layers(), m.top_k,
                      format_params(static_cast<double>(c.params_total())),
                      m.published_total ? format_params(*m.published_total) : "-",
                      format_params(static_cast<double>(c.params_active())),
                      m.published_active ? format_params(*m.published_active) : "-");
  }
}

void describe_models(std::ostream& os) { describe_models(os, load_default_model_catalog()); }

void describe_model(std::ostream& os, const ModelSpec& m) {
  auto row = [&os](const char* key, const std::string& v) { os << fmt::format("  {:<22} {}\n", key, v); };
  const char* act = m.activation == Activation::kSwiGLU  ? "swiglu"
                    : m.activation == Activation::kGeGLU ? "geglu"
                    : m.activation == Activation::kGelu  ? "gelu"
                                                         : "relu";
  os << fmt::format("{}\n", m.name);
  if (m.architecture == Architecture::kEncoderDecoder)
    row("layers", fmt::format("{} encoder + {} decoder", m.encoder_layers, m.decoder_layers));
  else
    row("layers", fmt::format("{}", m.decoder_layers));
  std::vector<int> moe = m.moe_layer_indices();
  std::string which;
  if (moe.empty())
    which = "none";
  else if (moe.back() - moe.front() + 1 == static_cast<int>(moe.size()))
    which = fmt::format("layers {}..{}", moe.front(), moe.back());
  else
    for (int l : moe) which += fmt::format("{}{}", which.empty() ? "layers " : ",", l);
  row("MoE layers", fmt::format("{} ({}; layer indices from 0)", moe.size(), which));
  row("hidden", fmt::format("{}", m.hidden));
  if (m.attention == AttentionKind::kMla)
    row("attention", fmt::format("MLA, {} heads, q_lora_rank {}, kv_lora_rank {}, qk_nope/rope {}/{}, v {}", m.heads,
                                 m.mla.q_lora_rank, m.mla.kv_lora_rank, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim,
                                 m.mla.v_head_dim));
  else
    row("attention", fmt::format("{} heads, {} kv heads, head dim {}{}", m.heads, m.kv_heads, m.head_dim,
                                 m.qk_norm ? ", qk-norm" : ""));
  row("vocab", fmt::format("{}{}", m.vocab, m.tied_embeddings ? " (tied embeddings)" : ""));
  row("dense FFN", m.dense_ffn > 0 ? fmt::format("{}", m.dense_ffn) : "-");
  row("experts", fmt::format("{} routed x FFN {}, top-{}", m.experts, m.expert_ffn, m.top_k));
  row("shared experts",
      m.shared_experts > 0 ? fmt::format("{} x FFN {}", m.shared_experts, m.shared_expert_ffn) : std::string("-"));
  row("activation", act);
  row("router",
      fmt::format("{}{}{}{}, scaling {}", m.gate == GateFunction::kSigmoid ? "sigmoid" : "softmax",
                  m.router_bias ? " + bias" : "", m.renormalize ? ", renormalised" : "",
                  m.n_groups > 1 ? fmt::format(", {} groups, top-{} groups", m.n_groups, m.topk_group) : std::string(),
                  m.routed_scaling_factor));
  row("dtype", fmt::format("{} ({} bytes/param)", m.dtype, m.bytes_per_param));
  const ParamCount c = count_params(m);
  os << fmt::format("  {:<22} {:>12} {:>12}\n", "parameters", "total", "active");
  const auto line = [&](const char* what, std::int64_t t, std::int64_t a) {
    os << fmt::format("    {:<20} {:>12} {:>12}\n", what, format_params(static_cast<double>(t)),
                      format_params(static_cast<double>(a)));
  };
  line("embeddings", c.total.embeddings, c.active.embeddings);
  line("lm head", c.total.lm_head, c.active.lm_head);
  line("attention", c.total.attention, c.active.attention);
  line("dense FFN", c.total.dense_ffn, c.active.dense_ffn);
  line("router", c.total.router, c.active.router);
  line("routed experts", c.total.experts, c.active.experts);
  line("shared experts", c.total.shared_experts, c.active.shared_experts);
  line("norms", c.total.norms, c.active.norms);
  line("sum", c.params_total(), c.params_active());
  os << fmt::format("    {:<20} {:>12} {:>12}\n", "published",
                    m.published_total ? format_params(*m.published_total) : "-",
                    m.published_active ? format_params(*m.published_active) : "-");
  os << fmt::format("  exact: total {} / active {} / active without the input embedding {}\n", c.params_total(),
                    c.params_active(), c.params_active_no_input_embedding());
  os << fmt::format("  source: {}\n", m.source);
}

}  // namespace moesim::models
