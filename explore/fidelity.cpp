#include "explore/fidelity.hpp"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "engine/run.hpp"
#include "engine/scenario.hpp"
#include "engine/step_builder.hpp"
#include "explore/pool.hpp"
#include "models/model_spec.hpp"

namespace moesim::explore {

using config::Diagnostic;
using config::Location;
using config::Node;
using config::Range;

const char* to_string(PointStatus s) {
  switch (s) {
    case PointStatus::kLive:
      return "live";
    case PointStatus::kApproximate:
      return "approx";
    case PointStatus::kNotExpressible:
      return "not_expressible";
    case PointStatus::kError:
      return "error";
  }
  return "?";
}

const FidelityCategory* FidelityMatrix::category(const std::string& name) const {
  for (const auto& c : categories)
    if (c.name == name) return &c;
  return nullptr;
}

const std::vector<MetricInfo>& fidelity_metrics() {
  static const std::vector<MetricInfo> m = {
      {"step_time_ms", "ms", "train/prefill/decode: simulated step time"},
      {"tokens_per_s_per_gpu", "tokens/s", "train/prefill: tokens per step / step time / GPUs"},
      {"input_tokens_per_s_per_gpu", "tokens/s", "prefill: prompt tokens per step / step time / GPUs"},
      {"output_tokens_per_s_per_gpu", "tokens/s", "decode: sequences per step / step time / GPUs"},
      {"tpot_ms", "ms", "decode: one decode step (time per output token)"},
      {"ttft_ms", "ms", "prefill: one prefill step of the batch"},
      {"tflops_per_gpu", "TFLOPS",
       "train: the source's FLOPs per token (flops_per_token) x tokens/s/GPU, so the error equals the "
       "throughput error"},
      {"peak_mem_GiB", "GiB", "train/prefill/decode: the memory estimate's peak per GPU"},
      {"time_us", "us", "collective: completion time; kernel: the cost model's duration"},
      {"algbw_GBps", "GB/s", "collective: nccl-tests algbw (size / time)"},
      {"busbw_GBps", "GB/s", "collective: nccl-tests busbw"},
      {"tflops", "TFLOPS", "kernel: FLOPs (the source's, when the entry gives them) / predicted time"},
      {"mem_bw_GBps", "GB/s", "kernel: the source's byte count (bytes) / predicted time"},
      {"dispatch_time_us", "us", "dispatch: the dispatch all-to-all alone on the network"},
      {"combine_time_us", "us", "dispatch: the combine all-to-all alone on the network"},
      {"dispatch_nvl_bw_GBps", "GB/s",
       "dispatch: DeepEP's NVLink bytes (rank 0's received rows, one per token and rank, "
       "own tokens included) / dispatch time"},
      {"combine_nvl_bw_GBps", "GB/s", "dispatch: the same rows at bf16 / combine time"},
      {"dispatch_rdma_bw_GBps", "GB/s",
       "dispatch: DeepEP's RDMA bytes (rank 0's tokens x destination nodes, own node "
       "included) / dispatch time"},
      {"combine_rdma_bw_GBps", "GB/s", "dispatch: the same at bf16 / combine time"},
      {"dispatch_ll_bw_GBps", "GB/s",
       "dispatch: DeepEP low-latency bytes (rank 0's kept selections x row) / dispatch time"},
      {"combine_ll_bw_GBps", "GB/s", "dispatch: the same at bf16 / combine time"},
      // Request-level serving (a serve workload; no mode produces these yet).
      {"ttft_p50_ms", "ms", "serve: median time to first token"},
      {"ttft_p90_ms", "ms", "serve: p90 time to first token"},
      {"ttft_p99_ms", "ms", "serve: p99 time to first token"},
      {"tpot_p50_ms", "ms", "serve: median time per output token"},
      {"tpot_p90_ms", "ms", "serve: p90 time per output token"},
      {"tpot_p99_ms", "ms", "serve: p99 time per output token"},
      {"e2e_latency_mean_ms", "ms", "serve: mean end-to-end request latency"},
      {"e2e_latency_p50_ms", "ms", "serve: median end-to-end request latency"},
      {"e2e_latency_p99_ms", "ms", "serve: p99 end-to-end request latency"},
      {"output_tokens_per_s_per_user", "tokens/s", "serve: output tokens per second seen by one request"},
      {"total_tokens_per_s_per_gpu", "tokens/s", "serve: (input + output) tokens per second per GPU"},
      {"request_throughput", "requests/s", "serve: completed requests per second"},
  };
  return m;
}

namespace {

const MetricInfo* find_metric(const std::string& name) {
  for (const auto& m : fidelity_metrics())
    if (m.name == name) return &m;
  return nullptr;
}

bool is_step_mode(engine::WorkloadMode m) {
  return m == engine::WorkloadMode::kTrain || m == engine::WorkloadMode::kPrefill || m == engine::WorkloadMode::kDecode;
}

/// Which metrics a point of this kind / workload mode can produce.
bool metric_applies(const std::string& metric, PointKind kind, engine::WorkloadMode mode) {
  using engine::WorkloadMode;
  if (kind == PointKind::kKernel) return metric == "time_us" || metric == "tflops" || metric == "mem_bw_GBps";
  if (kind != PointKind::kScenario) return true;
  if (mode == WorkloadMode::kCollective) return metric == "time_us" || metric == "algbw_GBps" || metric == "busbw_GBps";
  if (mode == WorkloadMode::kDispatch) return metric.rfind("dispatch_", 0) == 0 || metric.rfind("combine_", 0) == 0;
  if (!is_step_mode(mode)) return false;
  if (metric == "step_time_ms" || metric == "peak_mem_GiB") return true;
  if (metric == "tokens_per_s_per_gpu") return mode == WorkloadMode::kTrain || mode == WorkloadMode::kPrefill;
  if (metric == "tflops_per_gpu") return mode == WorkloadMode::kTrain;
  if (metric == "input_tokens_per_s_per_gpu" || metric == "ttft_ms") return mode == WorkloadMode::kPrefill;
  if (metric == "output_tokens_per_s_per_gpu" || metric == "tpot_ms") return mode == WorkloadMode::kDecode;
  return false;
}

std::vector<std::string> read_string_list(const Node& n) {
  std::vector<std::string> out;
  if (!n.defined()) return out;
  if (n.is_scalar()) {
    out.push_back(n.as_string());
    return out;
  }
  for (const Node& i : n.items()) out.push_back(i.as_string());
  return out;
}

bool valid_id(const std::string& id) {
  if (id.empty() || id.size() > 120) return false;
  for (char c : id)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

bool is_hex40(const std::string& s) {
  if (s.size() != 40) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string relative_to(const std::string& file, const std::string& p) {
  if (std::filesystem::path(p).is_absolute()) return p;
  return (std::filesystem::path(file).parent_path() / p).lexically_normal().string();
}

/// Reads `categories.yaml`.
std::vector<FidelityCategory> read_categories(const std::string& file, config::Diagnostics& diags) {
  std::vector<FidelityCategory> out;
  const config::Document d = config::Document::load_file(file);
  const Node root = d.root(diags);
  const Node cats = root.child("categories");
  if (!cats.is_map()) {
    root.error_at("categories", "expected a mapping of category names to { band, doc }");
    return out;
  }
  for (auto& [name, node] : cats.entries()) {
    FidelityCategory c;
    c.name = name;
    c.band = node.req_double("band", Range{0, 10, true});
    c.doc = node.req_string("doc");
    node.finish();
    out.push_back(std::move(c));
  }
  root.finish();
  return out;
}

/// The scenario document of a point: inline block or file, then `set:` and --set overrides.
config::Document point_document(const Node& entry, const std::string& matrix_file, const FidelityOptions& opts,
                                PublishedPoint& p) {
  const Node scen = entry.child("scenario");
  const Node file = entry.child("scenario_file");
  config::Document doc = config::Document::load_string("", matrix_file);
  if (scen.defined()) {
    if (!scen.is_map()) {
      scen.error("expected an inline scenario mapping (or use scenario_file: PATH)");
    } else {
      for (auto& [key, node] : scen.entries()) doc.set(key, node);
    }
  } else {
    p.scenario_file = relative_to(matrix_file, file.as_string());
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p.scenario_file, ec)) {
      file.error("scenario file not found: " + p.scenario_file);
      return doc;
    }
    doc = config::Document::load_file(p.scenario_file);
  }
  const Node set = entry.child("set");
  if (set.defined()) {
    if (!set.is_map()) {
      set.error("expected a mapping of YAML paths to values (e.g. set: { routing.sampling: counts })");
    } else {
      const std::vector<std::pair<std::string, Node>> sets = set.entries();
      bool model_paths = false;
      for (const auto& [path, v] : sets) model_paths = model_paths || path.rfind("model.", 0) == 0;
      if (model_paths) {
        // `set: { model.layers: 4 }` on `model: deepseek-v3`: inline the catalog entry first.
        config::Diagnostics scratch;
        const Node m = doc.root(scratch).child("model");
        if (m.is_scalar()) {
          const std::string cat = models::default_model_catalog_dir() + "/" + m.text() + ".yaml";
          std::error_code ec;
          if (std::filesystem::is_regular_file(cat, ec)) {
            const config::Document c = config::Document::load_file(cat);
            doc.set("model", c.root(scratch));
          }
        }
      }
      for (const auto& [path, v] : sets) {
        doc.set(path, v, v.location());
        p.sets.emplace_back(path, v.text());
      }
    }
  }
  for (const auto& o : opts.overrides) doc.apply_override(o);
  return doc;
}

/// Everything read from one entry. Scenario parsing errors are appended to `problems`.
PublishedPoint read_point(const Node& e, const std::string& file, const FidelityMatrix& m, const FidelityOptions& opts,
                          std::vector<Diagnostic>& problems, std::optional<engine::Scenario>& scenario) {
  PublishedPoint p;
  p.file = file;
  p.loc = e.location();
  p.id = e.req_string("id");
  if (!p.id.empty() && !valid_id(p.id))
    e.error_at("id", fmt::format("'{}': ids are lowercase letters, digits, '-', '_' and '.'", p.id));
  p.category = e.req_string("category");
  if (!p.category.empty() && m.category(p.category) == nullptr) {
    std::vector<std::string> names;
    for (const auto& c : m.categories) names.push_back(c.name);
    const auto guess = config::did_you_mean(p.category, names);
    e.error_at("category", fmt::format("unknown category '{}'{}; categories.yaml defines them", p.category,
                                       guess ? fmt::format(" (did you mean '{}'?)", *guess) : std::string()));
  }
  p.layout_group = e.opt_string("layout_group", "");
  const std::string subset = e.opt_choice("subset", {"heldout", "calibration"}, "heldout");
  p.calibration = subset == "calibration";

  const Node src = e.child("source");
  if (!src.is_map()) {
    e.error_at("source", "required: { title, url, quote, and commit (repositories) or date }");
  } else {
    const std::string title = src.req_string("title");
    const std::string url = src.opt_string("url", "");
    src.opt_string("path", "");
    src.opt_string("repo", "");
    const std::string commit = src.opt_string("commit", "");
    const std::string date = src.opt_string("date", "");
    src.req_string("quote");
    if (!commit.empty() && !is_hex40(commit))
      src.error_at("commit", fmt::format("'{}' is not a full 40-digit lowercase hex commit", commit));
    if (commit.empty() && date.empty()) src.error("needs a commit (repositories) or a date (pages, papers)");
    p.source = title + (commit.empty() ? " (" + date + ")" : " @" + commit.substr(0, 10));
    src.finish();
  }
  e.opt_string("hardware", "");
  const Node cfg = e.child("config");
  if (cfg.defined()) {
    if (!cfg.is_map())
      cfg.error("expected a mapping of configuration facts");
    else
      (void)cfg.entries();  // free-form facts, as the source states them
  }
  p.metric = e.req_string("metric");
  const MetricInfo* mi = p.metric.empty() ? nullptr : find_metric(p.metric);
  if (!p.metric.empty() && mi == nullptr) {
    std::vector<std::string> names;
    for (const auto& x : fidelity_metrics()) names.push_back(x.name);
    const auto guess = config::did_you_mean(p.metric, names);
    e.error_at("metric", fmt::format("unknown metric '{}'{}", p.metric,
                                     guess ? fmt::format(" (did you mean '{}'?)", *guess) : std::string()));
  }
  const Node pub = e.child("published");
  if (!pub.is_map()) {
    e.error_at("published", "required: { value, unit, as_quoted }");
  } else {
    p.published = pub.req_double("value", Range::positive());
    const std::string unit = pub.req_string("unit");
    pub.req_string("as_quoted");
    if (mi != nullptr && !unit.empty() && unit != mi->unit)
      pub.error_at("unit", fmt::format("'{}' is not the unit of metric {} ({}): convert the value and flag the point "
                                       "derived, with the arithmetic in `derivation`",
                                       unit, p.metric, mi->unit));
    pub.finish();
  }
  e.req_string("derivation");
  e.opt_string("framework_notes", "");
  e.opt_string("notes", "");
  p.flags = read_string_list(e.child("flags"));
  for (const auto& f : p.flags)
    if (f != "derived" && f != "ambiguous" && f != "not_expressible")
      e.error_at("flags", fmt::format("unknown flag '{}' (known: derived, ambiguous, not_expressible)", f));
  p.missing_features = read_string_list(e.child("missing_features"));
  const bool flagged_ne = std::find(p.flags.begin(), p.flags.end(), "not_expressible") != p.flags.end();
  if (flagged_ne && p.missing_features.empty())
    e.error_at("missing_features", "a not_expressible point must name the features moesim lacks");
  const FidelityCategory* cat = m.category(p.category);
  p.band = e.opt_double("band", cat != nullptr ? cat->band : 0.25, Range{0, 10, true});
  p.flops_per_token = e.opt_double("flops_per_token", 0, Range::non_negative());
  p.flops_override = e.opt_double("flops", 0, Range::non_negative());
  p.bytes_override = e.opt_double("bytes", 0, Range::non_negative());

  const int ways = int{e.has("scenario")} + int{e.has("scenario_file")} + int{e.has("kernel")};
  if (ways > 1) e.error("give one of scenario, scenario_file or kernel");
  if (e.has("set") && !e.has("scenario") && !e.has("scenario_file"))
    e.error_at("set", "set: overrides need a scenario or scenario_file");
  if (e.has("kernel")) {
    p.kind = PointKind::kKernel;
    const Node k = e.child("kernel");
    if (!k.is_map())
      k.error("expected a kernel query mapping (op, gpu, dtype, shape)");
    else
      p.kernel = engine::read_kernel_query(k);
    if (!p.kernel.profile.empty()) p.kernel.profile = relative_to(file, p.kernel.profile);
  } else if (e.has("scenario") || e.has("scenario_file")) {
    p.kind = PointKind::kScenario;
    try {
      const config::Document doc = point_document(e, file, opts, p);
      scenario = engine::parse_scenario(doc);
      config::Document key = doc.clone();  // the name does not change a simulation
      key.set("name", "''");
      p.run_key = "scenario\n" + key.dump();
      if (mi != nullptr && !metric_applies(p.metric, p.kind, scenario->workload.mode))
        e.error_at("metric", fmt::format("metric {} does not apply to a {} scenario", p.metric,
                                         engine::to_string(scenario->workload.mode)));
    } catch (const config::ConfigError& err) {
      for (const auto& d : err.diagnostics())
        problems.push_back(Diagnostic{d.loc, d.key, fmt::format("{} (point {})", d.message, p.id)});
    }
  } else if (!flagged_ne) {
    e.error(
        "a point needs a scenario, scenario_file or kernel query, or flags: [not_expressible] with "
        "missing_features");
  }
  if (p.kind == PointKind::kKernel && mi != nullptr && !metric_applies(p.metric, p.kind, engine::WorkloadMode::kTrain))
    e.error_at("metric", fmt::format("metric {} does not apply to a kernel point (time_us, tflops)", p.metric));
  if (p.kind == PointKind::kKernel && p.metric == "mem_bw_GBps" && !(p.bytes_override > 0))
    e.error_at("bytes", "mem_bw_GBps needs the source's byte count (bytes)");
  if (p.kind == PointKind::kScenario && p.metric == "tflops_per_gpu" && !(p.flops_per_token > 0))
    e.error_at("flops_per_token", "tflops_per_gpu needs the source's FLOPs per token (flops_per_token)");
  e.finish();
  return p;
}

}  // namespace

FidelityMatrix load_fidelity_matrix(const std::string& dir, const FidelityOptions& opts) {
  namespace fs = std::filesystem;
  FidelityMatrix m;
  m.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw config::ConfigError({Diagnostic{Location{dir, 0, 0}, "", "not a directory (expected a validation matrix)"}});
  config::Diagnostics diags;
  const std::string cat_file = (fs::path(dir) / "categories.yaml").string();
  if (!fs::is_regular_file(cat_file, ec))
    throw config::ConfigError(
        {Diagnostic{Location{cat_file, 0, 0}, "", "missing: a matrix folder needs categories.yaml"}});
  m.categories = read_categories(cat_file, diags);
  diags.throw_if_any();

  std::vector<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file() || e.path().extension() != ".yaml") continue;
    if (e.path().filename() == "categories.yaml" && e.path().parent_path() == fs::path(dir)) continue;
    files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());

  std::vector<Diagnostic> problems;
  std::map<std::string, Location> ids;
  for (const auto& f : files) {
    const config::Document doc = config::Document::load_file(f);
    const Node root = doc.root(diags);
    const Node pts = root.child("points");
    if (!pts.is_sequence()) {
      root.error_at("points", "expected a list of published points");
      continue;
    }
    for (const Node& e : pts.items()) {
      std::optional<engine::Scenario> scen;
      PublishedPoint p = read_point(e, f, m, opts, problems, scen);
      if (!p.id.empty()) {
        auto [it, fresh] = ids.emplace(p.id, e.location());
        if (!fresh) e.error_at("id", fmt::format("duplicate id '{}' (first at {})", p.id, it->second.str()));
      }
      m.points.push_back(std::move(p));
      m.scenarios.push_back(std::move(scen));
    }
    root.finish();
  }
  // Held-out points must stay at least half of every category.
  std::map<std::string, std::pair<int, int>> counts;  // category -> (held-out, calibration)
  for (const auto& p : m.points) (p.calibration ? counts[p.category].second : counts[p.category].first) += 1;
  for (const auto& [cat, c] : counts)
    if (c.first < c.second)
      diags.error(Location{cat_file, 0, 0}, "subset",
                  fmt::format("category {} has {} calibration points and only {} held out: at least half of every "
                              "category must be held out",
                              cat, c.second, c.first));
  for (auto& d : problems) diags.error(d.loc, d.key, d.message);
  diags.throw_if_any();
  return m;
}

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const std::size_t n = a.size();
  if (n < 2 || b.size() != n) return std::numeric_limits<double>::quiet_NaN();
  auto ranks = [n](const std::vector<double>& v) {
    std::vector<std::size_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](std::size_t x, std::size_t y) { return v[x] < v[y]; });
    std::vector<double> r(n);
    for (std::size_t i = 0; i < n;) {
      std::size_t j = i;
      while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) ++j;
      const double avg = (static_cast<double>(i) + static_cast<double>(j)) / 2.0 + 1.0;
      for (std::size_t k = i; k <= j; ++k) r[idx[k]] = avg;
      i = j + 1;
    }
    return r;
  };
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double mean = (static_cast<double>(n) + 1.0) / 2.0;
  double sab = 0, saa = 0, sbb = 0;
  for (std::size_t i = 0; i < n; ++i) {
    sab += (ra[i] - mean) * (rb[i] - mean);
    saa += (ra[i] - mean) * (ra[i] - mean);
    sbb += (rb[i] - mean) * (rb[i] - mean);
  }
  if (saa == 0 || sbb == 0) return std::numeric_limits<double>::quiet_NaN();
  return sab / std::sqrt(saa * sbb);
}

namespace {

double json_number(const nlohmann::ordered_json& j, std::initializer_list<const char*> path) {
  const nlohmann::ordered_json* cur = &j;
  for (const char* k : path) {
    if (!cur->is_object() || !cur->contains(k)) throw std::runtime_error(fmt::format("report has no '{}'", k));
    cur = &(*cur)[k];
  }
  if (!cur->is_number()) throw std::runtime_error("report value is not a number");
  return cur->get<double>();
}

/// What one simulation produced: a scenario's report or a kernel prediction (or the error).
struct JobOutput {
  nlohmann::ordered_json report;
  std::optional<engine::KernelPrediction> kernel;
  std::string error;
  double cpu_s = 0;
};

JobOutput run_job(const PublishedPoint& p, const std::optional<engine::Scenario>& s) {
  JobOutput out;
  const double t0 = engine::thread_cpu_seconds();
  try {
    if (p.kind == PointKind::kKernel) {
      out.kernel = engine::predict_kernel(p.kernel);
    } else {
      engine::RunOptions ro;
      ro.threads = 1;
      out.report = engine::run_scenario(*s, ro).report;
    }
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  out.cpu_s = engine::thread_cpu_seconds() - t0;
  return out;
}

PointResult evaluate(const PublishedPoint& p, const std::optional<engine::Scenario>& s, const JobOutput& job) {
  PointResult r;
  if (p.kind == PointKind::kNone) return r;  // not expressible
  r.status = p.missing_features.empty() ? PointStatus::kLive : PointStatus::kApproximate;
  r.cpu_s = job.cpu_s;
  try {
    if (!job.error.empty()) throw std::runtime_error(job.error);
    if (p.kind == PointKind::kKernel) {
      const engine::KernelPrediction& k = *job.kernel;
      // Published kernel figures are device times (profiler / event timings of back-to-back
      // launches), so the host launch part of the charged duration is left out.
      const double t = k.device_seconds;
      if (p.metric == "time_us")
        r.predicted = t * 1e6;
      else if (p.metric == "mem_bw_GBps")
        r.predicted = p.bytes_override / t / 1e9;
      else  // tflops
        r.predicted = (p.flops_override > 0 ? p.flops_override : k.flops) / t / 1e12;
    } else {
      const auto& j = job.report;
      const double gpus = static_cast<double>(s->cluster.total_gpus());
      const std::string& mt = p.metric;
      if (mt == "step_time_ms" || mt == "tpot_ms" || mt == "ttft_ms") {
        r.predicted = json_number(j, {"step_time_us"}) / 1e3;
      } else if (mt == "tokens_per_s_per_gpu" || mt == "input_tokens_per_s_per_gpu" ||
                 mt == "output_tokens_per_s_per_gpu") {
        r.predicted = json_number(j, {"tokens_per_s"}) / gpus;
      } else if (mt == "tflops_per_gpu") {
        r.predicted = p.flops_per_token * json_number(j, {"tokens_per_s"}) / gpus / 1e12;
      } else if (mt == "peak_mem_GiB") {
        r.predicted = json_number(j, {"memory", "peak_bytes_per_gpu"}) / 1073741824.0;
      } else if (mt == "time_us") {
        r.predicted = json_number(j, {"collective", "time_us"});
      } else if (mt == "algbw_GBps") {
        r.predicted = json_number(j, {"collective", "algbw_GBps"});
      } else if (mt == "busbw_GBps") {
        r.predicted = json_number(j, {"collective", "busbw_GBps"});
      } else if (s->workload.mode == engine::WorkloadMode::kDispatch) {
        // dispatch_time_us, combine_nvl_bw_GBps ... -> report["dispatch"]["time_us"], ["deepep_nvl_bw_GBps"]
        const std::string op = mt.substr(0, mt.find('_'));
        const std::string rest = mt.substr(op.size() + 1);
        const std::string key = rest == "time_us" ? rest : "deepep_" + rest;
        r.predicted = json_number(j, {op.c_str(), key.c_str()});
      }
      if (j.contains("memory") && j["memory"].contains("fits")) {
        r.peak_mem_gib = json_number(j, {"memory", "peak_bytes_per_gpu"}) / 1073741824.0;
        r.capacity_gib = json_number(j, {"memory", "capacity_bytes_per_gpu"}) / 1073741824.0;
        r.fits = j["memory"]["fits"].get<bool>() ? 1 : 0;
      }
      if (j.contains("breakdown_us")) {
        StepBreakdown b;
        b.compute_ms = json_number(j, {"breakdown_us", "compute"}) / 1e3;
        b.exposed_comm_ms = json_number(j, {"breakdown_us", "exposed_communication"}) / 1e3;
        b.pipeline_bubble_ms = json_number(j, {"idle_us", "pipeline"}) / 1e3;
        b.idle_other_ms = json_number(j, {"breakdown_us", "idle"}) / 1e3 - b.pipeline_bubble_ms;
        r.breakdown = b;
      }
    }
    if (!(r.predicted > 0) || !std::isfinite(r.predicted))
      throw std::runtime_error(fmt::format("prediction {} is not a positive number", r.predicted));
    r.error = r.predicted / p.published - 1.0;
    r.pass = std::fabs(r.error) <= p.band;
  } catch (const std::exception& e) {
    r.status = PointStatus::kError;
    r.message = e.what();
    r.pass = false;
  }
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

bool ran(PointStatus s) { return s == PointStatus::kLive || s == PointStatus::kApproximate; }

}  // namespace

std::vector<CategoryStats> category_stats(const FidelityMatrix& m, const FidelityReport& r,
                                          const std::vector<PointStatus>& statuses) {
  std::vector<CategoryStats> out;
  for (const auto& c : m.categories) {
    for (const char* subset : {"held-out", "calibration", "all"}) {
      CategoryStats st;
      st.category = c.name;
      st.subset = subset;
      std::vector<double> ape;
      double log_sum = 0;
      for (std::size_t i = 0; i < m.points.size(); ++i) {
        const auto& p = m.points[i];
        const auto& res = r.results[i];
        if (!r.selected[i] || p.category != c.name) continue;
        if (std::find(statuses.begin(), statuses.end(), res.status) == statuses.end()) continue;
        const std::string sub = subset;
        if (sub == "held-out" && p.calibration) continue;
        if (sub == "calibration" && !p.calibration) continue;
        const double a = std::fabs(res.error) * 100;
        ape.push_back(a);
        log_sum += std::log1p(res.error);
        if (a > st.worst_ape || st.worst_id.empty()) {
          st.worst_ape = a;
          st.worst_id = p.id;
        }
        (res.error > 0 ? st.over : st.under) += res.error != 0 ? 1 : 0;
        st.pass += res.pass ? 1 : 0;
      }
      st.n = static_cast<int>(ape.size());
      if (st.n == 0) continue;
      st.mape = std::accumulate(ape.begin(), ape.end(), 0.0) / st.n;
      st.median_ape = median(ape);
      st.geomean_ratio = std::exp(log_sum / st.n);
      out.push_back(std::move(st));
    }
  }
  return out;
}

FidelityReport run_fidelity(const FidelityMatrix& m, const FidelityOptions& opts) {
  FidelityReport rep;
  const std::size_t n = m.points.size();
  rep.results.resize(n);
  rep.selected.resize(n, true);
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < n; ++i) {
    if (!opts.only.empty() && fnmatch(opts.only.c_str(), m.points[i].id.c_str(), 0) != 0) {
      rep.selected[i] = false;
      continue;
    }
    todo.push_back(i);
  }
  // Points with the same scenario document (or the same kernel query) share one simulation: the
  // matrix quotes several figures of one run (step time and memory, dispatch and combine ...).
  std::vector<std::size_t> job_of(n, 0);
  std::vector<std::size_t> jobs;  // first point of each distinct run
  std::map<std::string, std::size_t> by_key;
  for (std::size_t i : todo) {
    if (m.points[i].kind == PointKind::kNone) continue;
    const std::string& key = m.points[i].run_key;
    auto [it, fresh] = by_key.emplace(key.empty() ? "#" + m.points[i].id : key, jobs.size());
    if (fresh) jobs.push_back(i);
    job_of[i] = it->second;
  }
  std::vector<JobOutput> outputs(jobs.size());
  std::size_t done = 0;
  run_ordered<JobOutput>(
      jobs.size(), opts.threads, [&](std::size_t k) { return run_job(m.points[jobs[k]], m.scenarios[jobs[k]]); },
      [&](std::size_t k, JobOutput&& out) {
        outputs[k] = std::move(out);
        ++done;
        if (opts.progress) opts.progress(m.points[jobs[k]], outputs[k].cpu_s, done, jobs.size());
      });
  for (std::size_t i : todo)
    rep.results[i] =
        evaluate(m.points[i], m.scenarios[i], m.points[i].kind == PointKind::kNone ? JobOutput{} : outputs[job_of[i]]);
  rep.live = category_stats(m, rep, {PointStatus::kLive});
  rep.with_approx = category_stats(m, rep, {PointStatus::kLive, PointStatus::kApproximate});

  // Layout groups: points of one group and metric that ran.
  std::map<std::pair<std::string, std::string>, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < n; ++i)
    if (rep.selected[i] && !m.points[i].layout_group.empty() && ran(rep.results[i].status))
      groups[{m.points[i].layout_group, m.points[i].metric}].push_back(i);
  for (const auto& entry : groups) {
    const auto& key = entry.first;
    const std::vector<std::size_t>& idx = entry.second;  // a plain reference: clang 14 cannot capture bindings
    GroupStats g;
    g.group = key.first;
    g.metric = key.second;
    g.n = static_cast<int>(idx.size());
    std::vector<double> pub, pred;
    for (std::size_t i : idx) {
      pub.push_back(m.points[i].published);
      pred.push_back(rep.results[i].predicted);
    }
    g.spearman = spearman(pub, pred);
    auto order = [&](const std::vector<double>& v) {
      std::vector<std::size_t> o(idx.size());
      std::iota(o.begin(), o.end(), 0);
      std::stable_sort(o.begin(), o.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
      std::vector<std::string> ids;
      for (std::size_t k : o) ids.push_back(m.points[idx[k]].id);
      return ids;
    };
    g.published_order = order(pub);
    g.predicted_order = order(pred);
    rep.groups.push_back(std::move(g));
  }
  return rep;
}

namespace {

std::string num(double v) {
  if (!std::isfinite(v)) return "-";
  const double a = std::fabs(v);
  if (a >= 1000) return fmt::format("{:.0f}", v);
  if (a >= 100) return fmt::format("{:.1f}", v);
  if (a >= 1) return fmt::format("{:.2f}", v);
  return fmt::format("{:.3g}", v);
}

std::string pct(double frac) { return fmt::format("{:+.1f}%", frac * 100); }

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

/// CSV field: quoted when it holds a comma, quote or newline.
std::string csv(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

/// Shortest round-trip decimal (the sweep CSVs' convention).
std::string exact(double v) {
  if (!std::isfinite(v)) return "";
  return fmt::format("{}", v);
}

struct Counts {
  int live = 0, approx = 0, ne = 0, error = 0, selected = 0;
};
Counts count(const FidelityMatrix& m, const FidelityReport& r) {
  Counts c;
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    ++c.selected;
    switch (r.results[i].status) {
      case PointStatus::kLive:
        ++c.live;
        break;
      case PointStatus::kApproximate:
        ++c.approx;
        break;
      case PointStatus::kNotExpressible:
        ++c.ne;
        break;
      case PointStatus::kError:
        ++c.error;
        break;
    }
  }
  return c;
}

void stats_table(std::string& out, const char* title, const std::vector<CategoryStats>& st, bool md) {
  if (st.empty()) return;
  if (md) {
    out += fmt::format(
        "\n### {}\n\n| category | subset | n | MAPE | median | worst (id) | geomean pred/pub | over/under "
        "| in band |\n| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |\n",
        title);
    for (const auto& s : st)
      out += fmt::format("| {} | {} | {} | {:.1f}% | {:.1f}% | {:.1f}% ({}) | {:.3f} | {}/{} | {}/{} |\n", s.category,
                         s.subset, s.n, s.mape, s.median_ape, s.worst_ape, s.worst_id, s.geomean_ratio, s.over, s.under,
                         s.pass, s.n);
    return;
  }
  out += fmt::format("\n{}\n{:<20} {:<11} {:>4} {:>7} {:>7} {:>7}  {:>8}  {:>10} {:>7}  {}\n", title, "category",
                     "subset", "n", "MAPE", "median", "worst", "geomean", "over/under", "in band", "worst point");
  for (const auto& s : st)
    out += fmt::format("{:<20} {:<11} {:>4} {:>6.1f}% {:>6.1f}% {:>6.1f}%  {:>8.3f}  {:>10} {:>7}  {}\n", s.category,
                       s.subset, s.n, s.mape, s.median_ape, s.worst_ape, s.geomean_ratio,
                       fmt::format("{}/{}", s.over, s.under), fmt::format("{}/{}", s.pass, s.n), s.worst_id);
}

}  // namespace

namespace {
/// Every published step configuration ran on its GPUs: the ones predicted not to fit.
std::string memory_fit_summary(const FidelityMatrix& m, const FidelityReport& r, bool markdown) {
  int with = 0, fit = 0;
  std::string list;
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    const auto& res = r.results[i];
    if (!ran(res.status) || res.fits < 0) continue;
    ++with;
    if (res.fits == 1) {
      ++fit;
      continue;
    }
    list += markdown ? fmt::format("| {} | {} | {:.1f} | {:.1f} | {} |\n", m.points[i].id, to_string(res.status),
                                   res.peak_mem_gib, res.capacity_gib, join(m.points[i].missing_features, "; "))
                     : fmt::format("  {} ({}): {:.1f} GiB of {:.1f}\n", m.points[i].id, to_string(res.status),
                                   res.peak_mem_gib, res.capacity_gib);
  }
  if (with == 0) return {};
  if (markdown)
    return fmt::format(
        "\n### Memory: configurations that ran\n\n{} of {} simulated step configurations fit "
        "(every one ran).{}",
        fit, with,
        list.empty() ? std::string("\n")
                     : "\n\n| point | status | predicted peak GiB | capacity GiB | missing features "
                       "|\n| --- | --- | ---: | ---: | --- |\n" +
                           list);
  return fmt::format("\nmemory: {} of {} simulated step configurations fit (every one ran){}\n{}", fit, with,
                     list.empty() ? "" : "; predicted not to fit:", list);
}
}  // namespace

std::string format_fidelity_text(const FidelityMatrix& m, const FidelityReport& r) {
  std::string out;
  const Counts c = count(m, r);
  out += fmt::format("moesim fidelity: {} points ({} live, {} approximate, {} not expressible, {} failed) from {}\n",
                     c.selected, c.live, c.approx, c.ne, c.error, m.dir);
  std::size_t w = 20;
  for (std::size_t i = 0; i < m.points.size(); ++i)
    if (r.selected[i]) w = std::max(w, m.points[i].id.size());
  out += fmt::format("\n{:<{}} {:<18} {:<6} {:<27} {:>10} {:>10} {:>8}  {}\n", "point", w, "category", "status",
                     "metric", "published", "predicted", "error", "band");
  std::size_t not_expressible = 0;
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    const auto& p = m.points[i];
    const auto& res = r.results[i];
    if (res.status == PointStatus::kNotExpressible) {
      ++not_expressible;
      continue;
    }
    const std::string status = to_string(res.status);
    if (ran(res.status))
      out += fmt::format("{:<{}} {:<18} {:<6} {:<27} {:>10} {:>10} {:>8}  {}{}\n", p.id, w, p.category, status,
                         p.metric, num(p.published), num(res.predicted), pct(res.error), res.pass ? "ok" : "OUT",
                         p.calibration ? " (calibration)" : "");
    else
      out += fmt::format("{:<{}} {:<18} {:<6} {:<27} {:>10} {:>10} {:>8}  {}\n", p.id, w, p.category, status, p.metric,
                         num(p.published), "-", "-", res.message);
  }
  if (not_expressible > 0)
    out += fmt::format("({} not-expressible points are not simulated; -o DIR lists each in fidelity.csv/.md)\n",
                       not_expressible);
  stats_table(out, "by category, live points (exact configurations):", r.live, false);
  stats_table(out, "by category, live + approximate points:", r.with_approx, false);
  if (!r.groups.empty()) {
    out += "\nlayout groups (Spearman rank correlation of predicted vs published, live + approximate):\n";
    for (const auto& g : r.groups) {
      out += fmt::format("  {} [{}] n={} rho={}\n", g.group, g.metric, g.n,
                         std::isfinite(g.spearman) ? fmt::format("{:+.2f}", g.spearman) : std::string("n/a"));
      out += fmt::format("    published order: {}\n    predicted order: {}\n", join(g.published_order, " > "),
                         join(g.predicted_order, " > "));
    }
  }
  out += memory_fit_summary(m, r, false);
  // What is missing, by how many points need it (approximate and not-expressible points).
  std::map<std::string, std::pair<int, int>> need;  // feature -> (approximate, not expressible)
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    for (const auto& f : m.points[i].missing_features)
      (r.results[i].status == PointStatus::kNotExpressible ? need[f].second : need[f].first) += 1;
  }
  if (!need.empty()) {
    std::vector<std::pair<std::string, std::pair<int, int>>> v(need.begin(), need.end());
    std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
      return a.second.first + a.second.second > b.second.first + b.second.second;
    });
    out += "\nmissing features, by the points that need them (approximate + not expressible):\n";
    for (const auto& [feature, counts] : v)
      out += fmt::format("  {:>4} {:>4}  {}\n", counts.first, counts.second, feature);
  }
  return out;
}

std::string format_fidelity_csv(const FidelityMatrix& m, const FidelityReport& r) {
  std::string out =
      "id,category,subset,layout_group,metric,status,published,predicted,error_pct,band_pct,pass,compute_ms,"
      "exposed_comm_ms,pipeline_bubble_ms,idle_other_ms,peak_mem_gib,fits,missing_features,source\n";
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    const auto& p = m.points[i];
    const auto& res = r.results[i];
    const bool ok = ran(res.status);
    std::string b = ",,,";
    if (res.breakdown)
      b = fmt::format("{},{},{},{}", exact(res.breakdown->compute_ms), exact(res.breakdown->exposed_comm_ms),
                      exact(res.breakdown->pipeline_bubble_ms), exact(res.breakdown->idle_other_ms));
    const bool mem = ok && res.fits >= 0;
    out += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv(p.id), csv(p.category),
                       p.calibration ? "calibration" : "heldout", csv(p.layout_group), csv(p.metric),
                       to_string(res.status), exact(p.published), ok ? exact(res.predicted) : "",
                       ok ? exact(res.error * 100) : "", exact(p.band * 100), res.pass ? 1 : 0, b,
                       mem ? exact(res.peak_mem_gib) : "", mem ? std::to_string(res.fits) : "",
                       csv(join(p.missing_features, "; ")), csv(p.source));
  }
  return out;
}

std::string format_fidelity_markdown(const FidelityMatrix& m, const FidelityReport& r) {
  std::string out;
  const Counts c = count(m, r);
  out += fmt::format("# moesim fidelity\n\n{} points: {} live, {} approximate, {} not expressible, {} failed.\n",
                     c.selected, c.live, c.approx, c.ne, c.error);
  stats_table(out, "By category, live points", r.live, true);
  stats_table(out, "By category, live + approximate points", r.with_approx, true);
  if (!r.groups.empty()) {
    out +=
        "\n### Layout groups\n\n| group | metric | n | Spearman | published order | predicted order |\n"
        "| --- | --- | ---: | ---: | --- | --- |\n";
    for (const auto& g : r.groups)
      out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", g.group, g.metric, g.n,
                         std::isfinite(g.spearman) ? fmt::format("{:+.2f}", g.spearman) : std::string("n/a"),
                         join(g.published_order, " > "), join(g.predicted_order, " > "));
  }
  out += memory_fit_summary(m, r, true);
  out +=
      "\n### Points\n\n| point | category | status | metric | published | predicted | error | breakdown (ms: compute / "
      "exposed comm / bubbles / other idle) | missing features |\n| --- | --- | --- | --- | ---: | ---: | ---: | --- | "
      "--- |\n";
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    const auto& p = m.points[i];
    const auto& res = r.results[i];
    const bool ok = ran(res.status);
    std::string b;
    if (res.breakdown)
      b = fmt::format("{} / {} / {} / {}", num(res.breakdown->compute_ms), num(res.breakdown->exposed_comm_ms),
                      num(res.breakdown->pipeline_bubble_ms), num(res.breakdown->idle_other_ms));
    out += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", p.id, p.category, to_string(res.status),
                       p.metric, num(p.published), ok ? num(res.predicted) : "-", ok ? pct(res.error) : "-", b,
                       join(p.missing_features, "; "));
  }
  return out;
}

namespace {

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cur += '"';
        ++i;
      } else if (ch == '"') {
        quoted = false;
      } else {
        cur += ch;
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

}  // namespace

std::vector<BaselineRow> read_fidelity_baseline(const std::string& file) {
  std::ifstream in(file);
  auto fail = [&](int line, const std::string& msg) {
    throw config::ConfigError({Diagnostic{Location{file, line, 0}, "baseline", msg}});
  };
  if (!in) fail(0, "cannot read the baseline file");
  std::string line;
  if (!std::getline(in, line)) fail(1, "empty baseline (expected a fidelity.csv)");
  const std::vector<std::string> head = split_csv_line(line);
  // Index of a column, head.size() when absent.
  auto find_col = [&](const char* name) {
    return static_cast<std::size_t>(std::find(head.begin(), head.end(), name) - head.begin());
  };
  auto col = [&](const char* name) {
    const std::size_t i = find_col(name);
    if (i == head.size()) fail(1, fmt::format("no '{}' column (expected a fidelity.csv)", name));
    return i;
  };
  const std::size_t c_id = col("id"), c_cat = col("category"), c_status = col("status"), c_err = col("error_pct"),
                    c_pass = col("pass");
  const std::size_t c_fits = find_col("fits");  // optional (baselines written before it lack it)
  std::vector<BaselineRow> rows;
  int ln = 1;
  while (std::getline(in, line)) {
    ++ln;
    if (line.empty()) continue;
    const auto f = split_csv_line(line);
    if (f.size() != head.size()) fail(ln, fmt::format("{} fields, the header has {}", f.size(), head.size()));
    BaselineRow r;
    r.id = f[c_id];
    r.category = f[c_cat];
    r.status = f[c_status];
    r.pass = f[c_pass] == "1";
    if (c_fits < head.size() && !f[c_fits].empty()) {
      if (f[c_fits] != "0" && f[c_fits] != "1") fail(ln, fmt::format("fits '{}' is not 0 or 1", f[c_fits]));
      r.fits = f[c_fits] == "1" ? 1 : 0;
    }
    if (!f[c_err].empty()) {
      try {
        std::size_t used = 0;
        r.error = std::stod(f[c_err], &used) / 100.0;
        if (used != f[c_err].size()) throw std::invalid_argument("trailing");
      } catch (const std::exception&) {
        fail(ln, fmt::format("error_pct '{}' is not a number", f[c_err]));
      }
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

GateResult check_fidelity_gate(const FidelityMatrix& m, const FidelityReport& r, const std::vector<BaselineRow>& base,
                               double slack) {
  GateResult g;
  std::map<std::string, const BaselineRow*> by_id;
  for (const auto& b : base) by_id[b.id] = &b;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> common;  // category -> (base, now) APE
  for (std::size_t i = 0; i < m.points.size(); ++i) {
    if (!r.selected[i]) continue;
    const auto& p = m.points[i];
    const auto& res = r.results[i];
    auto it = by_id.find(p.id);
    if (it == by_id.end()) continue;
    const BaselineRow& b = *it->second;
    const bool b_ran = b.status == "live" || b.status == "approx";
    if (b.pass && !res.pass)
      g.failures.push_back(fmt::format("{}: passed its band in the baseline ({}), now {}", p.id, pct(b.error),
                                       ran(res.status) ? fmt::format("{} (band {:.0f}%)", pct(res.error), p.band * 100)
                                                       : std::string(to_string(res.status))));
    if (b.fits == 1 && ran(res.status) && res.fits == 0)
      g.failures.push_back(
          fmt::format("{}: fitted in memory in the baseline, now predicted not to fit ({:.1f} GiB of "
                      "{:.1f}; the configuration ran)",
                      p.id, res.peak_mem_gib, res.capacity_gib));
    if (b_ran && ran(res.status)) {
      common[p.category].first.push_back(std::fabs(b.error) * 100);
      common[p.category].second.push_back(std::fabs(res.error) * 100);
    } else if (b_ran && !ran(res.status)) {
      g.failures.push_back(fmt::format("{}: ran in the baseline, now {}", p.id, to_string(res.status)));
    }
  }
  g.text = fmt::format(
      "\nregression gate (category MAPE over the points simulated in the baseline and now):\n"
      "{:<20} {:>4} {:>13} {:>9} {:>8}\n",
      "category", "n", "baseline MAPE", "now MAPE", "change");
  for (const auto& [cat, v] : common) {
    const double n = static_cast<double>(v.first.size());
    const double before = std::accumulate(v.first.begin(), v.first.end(), 0.0) / n;
    const double now = std::accumulate(v.second.begin(), v.second.end(), 0.0) / n;
    g.text +=
        fmt::format("{:<20} {:>4} {:>12.1f}% {:>8.1f}% {:>+7.1f}\n", cat, v.first.size(), before, now, now - before);
    if (now > before + slack)
      g.failures.push_back(fmt::format("category {}: MAPE {:.1f}% -> {:.1f}% (worse by more than {:.1f} points)", cat,
                                       before, now, slack));
  }
  g.ok = g.failures.empty();
  g.text += g.ok ? "gate: ok\n" : fmt::format("gate: FAILED ({} problems)\n", g.failures.size());
  for (const auto& f : g.failures) g.text += "  " + f + "\n";
  return g;
}

}  // namespace moesim::explore
