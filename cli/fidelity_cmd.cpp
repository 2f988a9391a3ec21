#include "cli/fidelity_cmd.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "config/reader.hpp"
#include "engine/kernel_query.hpp"
#include "explore/fidelity.hpp"

namespace moesim::cli {

namespace {

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  f << content;
  f.close();
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace

FidelityCommand::FidelityCommand(CLI::App& app) {
  cmd_ = app.add_subcommand("fidelity", "predictions against the matrix of published GPU measurements");
  dir_ = "validation/published";
  cmd_->add_option("matrix", dir_, "validation matrix folder (default validation/published)");
  cmd_->add_option("-j,--jobs", threads_, "simulate this many points at once (results do not depend on it)")
      ->check(CLI::Range(1, 1024));
  cmd_->add_option("-o,--output", out_dir_, "write fidelity.csv and fidelity.md here");
  cmd_->add_option("--only", only_, "run only the points whose id matches this glob (e.g. 'deepgemm-*')");
  cmd_->add_option("--baseline", baseline_,
                   "compare with a previous fidelity.csv: exit 4 when a category's MAPE worsens by more than 1 "
                   "point or a point that passed its band no longer does");
  cmd_->add_option("--set", sets_, "override a value in every scenario point: key.path=value (repeatable)");
  cmd_->add_flag("-q,--quiet", quiet_, "no progress on stderr");
}

int FidelityCommand::run() const {
  namespace ex = moesim::explore;
  ex::FidelityOptions o;
  o.overrides = sets_;
  o.only = only_;
  o.threads = threads_;
  if (!quiet_)
    o.progress = [](const ex::PublishedPoint& p, double cpu_s, std::size_t done, std::size_t total) {
      fmt::print(stderr, "fidelity: [{}/{}] {} ({:.2f} s CPU)\n", done, total, p.id, cpu_s);
    };
  const ex::FidelityMatrix m = ex::load_fidelity_matrix(dir_, o);
  std::vector<ex::BaselineRow> base;
  if (!baseline_.empty()) base = ex::read_fidelity_baseline(baseline_);  // bad file: exit 2 before running
  if (!out_dir_.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir_, ec);
    if (ec) throw std::runtime_error(fmt::format("cannot create directory {}: {}", out_dir_, ec.message()));
  }
  const ex::FidelityReport r = ex::run_fidelity(m, o);
  std::string text = ex::format_fidelity_text(m, r);
  int rc = 0;
  for (const auto& res : r.results)
    if (res.status == ex::PointStatus::kError) rc = 3;
  if (!baseline_.empty()) {
    const ex::GateResult g = ex::check_fidelity_gate(m, r, base);
    text += g.text;
    if (!g.ok) rc = 4;
  }
  std::fputs(text.c_str(), stdout);
  if (!out_dir_.empty()) {
    write_file(out_dir_ + "/fidelity.csv", ex::format_fidelity_csv(m, r));
    write_file(out_dir_ + "/fidelity.md", ex::format_fidelity_markdown(m, r));
  }
  if (std::fflush(stdout) != 0) throw std::runtime_error("cannot write the report to stdout");
  return rc;
}

CostCommand::CostCommand(CLI::App& app) {
  cmd_ = app.add_subcommand("cost", "ask the kernel cost models for one kernel (every term of the prediction)");
  cmd_->add_option("op", op_, "gemm | grouped-gemm | attention")->required();
  cmd_->add_option("--gpu", gpu_, "catalog GPU (moesim describe gpus)")->required();
  cmd_->add_option("--dtype", dtype_, "inputs and weights: fp8 | bf16 | fp16 | tf32 | fp32 (default bf16)");
  cmd_->add_option("--out-dtype", out_dtype_, "GEMM output dtype (default bf16)");
  cmd_->add_option("--tile", tile_, "GEMM tile, e.g. BM128_BN128 (default: the model's)");
  cmd_->add_option("--profile", profile_, "fitted cost profile YAML (default: catalog-derived defaults)");
  cmd_->add_option("--m", m_, "GEMM rows (grouped: rows per group)");
  cmd_->add_option("--n", n_, "GEMM output columns");
  cmd_->add_option("--k", k_, "GEMM reduction size");
  cmd_->add_option("--groups", groups_, "grouped GEMM: experts with --m rows each");
  cmd_->add_option("--rows", rows_, "grouped GEMM: rows per expert, comma-separated (instead of --groups/--m)");
  cmd_->add_option("--layout", layout_, "grouped GEMM: contiguous | masked");
  cmd_->add_option("--phase", phase_, "attention: prefill | decode");
  cmd_->add_option("--batch", batch_, "attention: sequences");
  cmd_->add_option("--q-len", q_len_, "attention: query tokens per sequence (decode: 1)");
  cmd_->add_option("--kv-len", kv_len_, "attention: keys per sequence (default q-len)");
  cmd_->add_option("--heads", heads_, "attention: query heads");
  cmd_->add_option("--kv-heads", kv_heads_, "attention: K/V heads (default heads)");
  cmd_->add_option("--head-dim", head_dim_, "attention: head dimension");
  cmd_->add_option("--causal", causal_, "attention: true | false (default: true for prefill)");
  cmd_->add_flag("--json", json_, "print the prediction as JSON");
}

int CostCommand::run() const {
  // The flags become the same YAML map a validation-matrix kernel point holds, read by the same
  // function, so both are checked the same way (unknown combinations are errors, not ignored).
  std::string op = op_;
  if (op == "grouped-gemm") op = "grouped_gemm";
  std::string y = fmt::format("op: {}\ngpu: '{}'\n", op, gpu_);
  auto str = [&](const char* key, const std::string& v) {
    if (!v.empty()) y += fmt::format("{}: '{}'\n", key, v);
  };
  auto num = [&](const char* key, long long v) {
    if (v >= 0) y += fmt::format("{}: {}\n", key, v);
  };
  str("dtype", dtype_);
  str("out_dtype", out_dtype_);
  str("tile", tile_);
  str("profile", profile_);
  str("layout", layout_);
  str("phase", phase_);
  num("m", m_);
  num("n", n_);
  num("k", k_);
  num("groups", groups_);
  if (!rows_.empty()) y += fmt::format("rows: [{}]\n", rows_);
  num("batch", batch_);
  num("q_len", q_len_);
  num("kv_len", kv_len_);
  num("heads", heads_);
  num("kv_heads", kv_heads_);
  num("head_dim", head_dim_);
  if (!causal_.empty()) y += fmt::format("causal: {}\n", causal_);
  const config::Document doc = config::Document::load_string(y, "moesim cost");
  config::Diagnostics diags;
  const engine::KernelQuery q = engine::read_kernel_query(doc.root(diags));
  diags.throw_if_any();
  const engine::KernelPrediction p = engine::predict_kernel(q);
  if (json_) {
    nlohmann::ordered_json j;
    j["op"] = engine::to_string(q.op);
    j["gpu"] = q.gpu;
    j["time_us"] = p.seconds * 1e6;
    j["device_time_us"] = p.device_seconds * 1e6;
    j["flops"] = p.flops;
    j["tflops"] = p.tflops();
    j["bytes"] = p.bytes;
    j["params"] = p.params_source;
    nlohmann::ordered_json terms = nlohmann::ordered_json::object();
    for (const auto& t : p.terms) terms[t.name] = t.value;
    j["terms"] = std::move(terms);
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  std::string shape;
  if (q.op == engine::KernelOp::kGemm) {
    shape = fmt::format("M={} N={} K={}", q.m, q.n, q.k);
  } else if (q.op == engine::KernelOp::kGroupedGemm) {
    std::int64_t rows = 0;
    for (auto r : q.rows) rows += r;
    shape = fmt::format("{} experts, {} rows, N={} K={}{}", q.rows.size(), rows, q.n, q.k, q.masked ? ", masked" : "");
  } else {
    const auto& a = q.attention;
    shape = fmt::format("{} batch={} q_len={} kv_len={} heads={} kv_heads={} head_dim={}{}",
                        a.phase == models::cost::AttentionShape::Phase::kDecode ? "decode" : "prefill", a.batch,
                        a.q_len, a.kv_len, a.heads, a.kv_heads, a.head_dim, a.causal ? " causal" : "");
  }
  fmt::print("{} on {} ({}), {}\nparameters: {}\n", engine::to_string(q.op), q.gpu, models::cost::to_string(q.dtype),
             shape, p.params_source);
  for (const auto& t : p.terms) fmt::print("  {:<10} {:>14.6g} {}\n", t.name, t.value, t.unit);
  fmt::print("time {:.3f} us charged ({:.3f} us on the device), {:.1f} TFLOP/s, {:.1f} GB/s of minimum traffic\n",
             p.seconds * 1e6, p.device_seconds * 1e6, p.tflops(), p.seconds > 0 ? p.bytes / p.seconds / 1e9 : 0.0);
  return 0;
}

}  // namespace moesim::cli
