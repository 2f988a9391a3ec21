#include <catch2/catch.hpp>

#include <cmath>
#include <sstream>
#include <string>

#include "config/reader.hpp"
#include "models/model_spec.hpp"

using namespace moesim;
using namespace moesim::models;

namespace {

const std::vector<ModelSpec>& catalog() {
  static const std::vector<ModelSpec> c = load_default_model_catalog();
  return c;
}

const ModelSpec& model(const std::string& name) {
  const ModelSpec* m = find_model(catalog(), name);
  REQUIRE(m != nullptr);
  return *m;
}

double rel_err(double ours, double published) { return std::abs(ours - published) / published; }

ModelSpec parse_text(const std::string& text, config::Diagnostics& d) {
  static std::vector<config::Document> keep;  // nodes refer into their document
  keep.push_back(config::Document::load_string(text, "inline.yaml"));
  return parse_model(keep.back().root(d));
}

}  // namespace

TEST_CASE("catalog holds the models the issue lists", "[models][params]") {
  for (const char* n : {"switch-base-128", "switch-c-2048", "nllb-moe-54b", "mixtral-8x7b", "mixtral-8x22b",
                        "deepseek-v2-lite", "deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b"})
    REQUIRE(find_model(catalog(), n) != nullptr);
}

// Published totals, each from the model's card or paper (cited in models/catalog/<name>.yaml).
TEST_CASE("total parameters match published figures within 1%", "[models][params]") {
  struct Row {
    const char* name;
    double published;
  };
  const Row rows[] = {
      {"mixtral-8x7b", 46.7e9},      // Jiang et al. 2024, "Mixtral of Experts": 46.7B
      {"mixtral-8x22b", 141e9},      // Mistral AI announcement: 141B
      {"deepseek-v2-lite", 15.7e9},  // DeepSeek-V2 paper appendix: 15.7B
      {"deepseek-v3", 671e9},        // DeepSeek-V3 report s4.2: 671B (without the 14B MTP module)
      {"qwen3-30b-a3b", 30.5e9},     // Qwen3-30B-A3B model card: 30.5B
      {"qwen3-235b-a22b", 235e9},    // Qwen3-235B-A22B model card: 235B
      {"switch-c-2048", 1571e9},     // Fedus et al. Table 9: 1571B
      {"switch-base-128", 7.4e9},    // Hub checkpoint size of google/switch-base-128: 7.4B
      {"nllb-moe-54b", 54.5e9},      // NLLB Team 2022: 54.5B
  };
  for (const auto& r : rows) {
    INFO(r.name << ": ours " << count_params(model(r.name)).params_total());
    CHECK(rel_err(static_cast<double>(count_params(model(r.name)).params_total()), r.published) < 0.01);
  }
}

/// n truncated to two significant digits (how several model cards state "3.3B" for 3.353B).
double two_digits_truncated(double n) {
  const double unit = std::pow(10.0, std::floor(std::log10(n)) - 1);
  return std::floor(n / unit + 1e-9) * unit;
}

TEST_CASE("active parameters per token match published figures", "[models][params]") {
  // Mistral and Qwen count the embedding table and LM head as active (12.88B = 11.27B experts +
  // 1.34B attention + 0.26B embeddings for Mixtral 8x7B). Within 1%:
  CHECK(rel_err(static_cast<double>(count_params(model("mixtral-8x7b")).params_active()), 12.9e9) < 0.01);
  CHECK(rel_err(static_cast<double>(count_params(model("mixtral-8x22b")).params_active()), 39e9) < 0.01);
  CHECK(rel_err(static_cast<double>(count_params(model("qwen3-235b-a22b")).params_active()), 22e9) < 0.01);
  // The published figures below have two significant digits and no definition brings our exact
  // count within 1% of them (see the model YAMLs for every variant and the sources). What is
  // checked is what can be: the published figure is our exact count truncated to two digits,
  // and the relative gap is pinned so that any change in the accounting shows up.
  // Qwen3-30B-A3B (Qwen's definition, embeddings included): 3.353B -> "3.3B", 1.6% gap.
  const double q3 = static_cast<double>(count_params(model("qwen3-30b-a3b")).params_active());
  CHECK(two_digits_truncated(q3) == Approx(3.3e9).epsilon(1e-12));
  CHECK(rel_err(q3, 3.3e9) == Approx(0.016).margin(0.001));
  // DeepSeek-V3 "37B": 37.55B with the input embedding (+1.49%), 36.63B without (-1.01%).
  const ParamCount v3 = count_params(model("deepseek-v3"));
  CHECK(two_digits_truncated(static_cast<double>(v3.params_active())) == Approx(37e9).epsilon(1e-12));
  CHECK(std::abs(static_cast<double>(v3.params_active_no_input_embedding()) - 37e9) <= 0.5e9);  // rounds to 37B
  // DeepSeek-V2-Lite "2.4B": 2.661B with embeddings (+10.9%), 2.451B without the input embedding
  // (+2.1%), 2.242B without embedding and head (-6.6%). An open, unanswered question upstream
  // (deepseek-ai/DeepSeek-V2 issue 73); pinned at the closest definition.
  const ParamCount v2l = count_params(model("deepseek-v2-lite"));
  CHECK(rel_err(static_cast<double>(v2l.params_active_no_input_embedding()), 2.4e9) == Approx(0.0214).margin(0.001));
  CHECK(rel_err(static_cast<double>(v2l.params_active()), 2.4e9) == Approx(0.109).margin(0.001));
}

TEST_CASE("Qwen3 non-embedding counts match the model cards", "[models][params]") {
  CHECK(rel_err(static_cast<double>(count_params(model("qwen3-30b-a3b")).params_non_embedding()), 29.9e9) < 0.01);
  CHECK(rel_err(static_cast<double>(count_params(model("qwen3-235b-a22b")).params_non_embedding()), 234e9) < 0.01);
}

TEST_CASE("Mixtral 8x7B breakdown by hand", "[models][params]") {
  const ParamCount c = count_params(model("mixtral-8x7b"));
  // expert: 3 * 4096 * 14336; 8 experts x 32 layers.
  REQUIRE(c.expert_params == 3LL * 4096 * 14336);
  REQUIRE(c.total.experts == 32LL * 8 * 3 * 4096 * 14336);
  REQUIRE(c.active.experts == 32LL * 2 * 3 * 4096 * 14336);
  // attention: q,o 4096x4096, k,v 4096x1024.
  REQUIRE(c.total.attention == 32LL * (2 * 4096 * 4096 + 2 * 4096 * 1024));
  REQUIRE(c.total.router == 32LL * 4096 * 8);
  REQUIRE(c.total.embeddings == 32000LL * 4096);
  REQUIRE(c.total.lm_head == 32000LL * 4096);
  REQUIRE(c.total.norms == 32LL * 2 * 4096 + 4096);
  REQUIRE(c.total.dense_ffn == 0);
}

TEST_CASE("DeepSeek-V3 MLA and layer pattern by hand", "[models][params]") {
  const ModelSpec& m = model("deepseek-v3");
  REQUIRE(m.num_moe_layers() == 58);
  REQUIRE_FALSE(m.moe_layer[2]);
  REQUIRE(m.moe_layer[3]);
  const ParamCount c = count_params(m);
  const long long mla =
      7168LL * 1536 + 1536 + 1536LL * 128 * 192 + 7168LL * 576 + 512 + 512LL * 128 * 256 + 128LL * 128 * 7168;
  REQUIRE(c.total.attention == 61 * mla);
  REQUIRE(c.total.shared_experts == 58LL * 3 * 7168 * 2048);
  REQUIRE(c.total.dense_ffn == 3LL * 3 * 7168 * 18432);
  REQUIRE(c.total.router == 58LL * (7168 * 256 + 256));
}

TEST_CASE("encoder-decoder: decoder layers carry cross-attention", "[models][params]") {
  const ModelSpec& m = model("switch-base-128");
  REQUIRE(m.num_layers() == 24);
  REQUIRE(m.num_moe_layers() == 12);
  REQUIRE(m.moe_layer[1]);
  REQUIRE_FALSE(m.moe_layer[0]);
  const ParamCount c = count_params(m);
  REQUIRE(c.total.attention == (12 + 24) * 4LL * 768 * 768);
  REQUIRE(c.total.lm_head == 0);  // tied
}

TEST_CASE("a model can be added in YAML only, with unknown-key errors", "[models][params]") {
  config::Diagnostics d;
  const ModelSpec m = parse_text(R"(name: tiny-moe
layers: 4
hidden: 64
heads: 4
vocab: 1000
dense_ffn: 256
expert_ffn: 128
experts: 8
top_k: 2
moe_layers: { every: 2, offset: 1 }
)",
                                 d);
  REQUIRE(d.empty());
  REQUIRE(m.moe_layer_indices() == std::vector<int>{1, 3});
  const ParamCount c = count_params(m);
  REQUIRE(c.total.experts == 2LL * 8 * 3 * 64 * 128);
  REQUIRE(c.total.dense_ffn == 2LL * 3 * 64 * 256);

  config::Diagnostics d2;
  parse_text("name: x\nlayers: 2\nhidden: 64\nheads: 4\nvocab: 10\nexpert_ffn: 8\nexperts: 4\ntop_k: 5\nhiden: 3\n",
             d2);
  REQUIRE(d2.size() >= 2);
  std::string all;
  for (const auto& x : d2.all()) all += x.str() + "\n";
  INFO(all);
  REQUIRE(all.find("inline.yaml:8:8: top_k: top_k (5) exceeds the number of experts (4)") != std::string::npos);
  REQUIRE(all.find("inline.yaml:9:1: hiden") != std::string::npos);
}

TEST_CASE("describe models lists every catalog entry with counts", "[models][params]") {
  std::ostringstream os;
  describe_models(os, catalog());
  const std::string s = os.str();
  for (const auto& m : catalog()) REQUIRE(s.find(m.name) != std::string::npos);
  REQUIRE(s.find("46.70B") != std::string::npos);
  REQUIRE(s.find("12.88B") != std::string::npos);
}
