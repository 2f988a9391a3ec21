#include "models/cost/calibrate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <ostream>
#include <set>
#include <stdexcept>

#include "config/reader.hpp"
#include "models/cost/csv.hpp"
#include "models/cost/fit.hpp"

namespace moesim::models::cost {

namespace {

[[noreturn]] void fail_at(const std::string& file, int line, const std::string& key, const std::string& message) {
  config::Diagnostics d;
  d.error(config::Location{file, line, 0}, key, message);
  d.throw_if_any();
  throw std::logic_error("unreachable");
}

enum class ModelKind { kGemm, kBandwidth, kRoofline, kNone };

ModelKind kind_of(const std::string& family) {
  if (family == "grouped_gemm" || family == "grouped_gemm_masked" || family == "dense_gemm") return ModelKind::kGemm;
  if (family == "routing" || family == "elementwise") return ModelKind::kBandwidth;
  if (family == "attention_prefill" || family == "attention_decode") return ModelKind::kRoofline;
  return ModelKind::kNone;
}

std::string join_path(const std::string& dir, const char* file) { return (std::filesystem::path(dir) / file).string(); }

const std::vector<std::string> kRunsRequired = {"schema_version", "run_id",   "git_commit",
                                                "gpu_name",       "sm_count", "sm_clock_probed_mhz"};
const std::vector<std::string> kMeasRequired = {"schema_version",
                                                "run_id",
                                                "config_id",
                                                "heldout",
                                                "kernel_family",
                                                "impl",
                                                "impl_config",
                                                "dtype_in",
                                                "dtype_out",
                                                "K",
                                                "N",
                                                "bytes_min",
                                                "l2_mode",
                                                "timing_method",
                                                "time_us_median",
                                                "sm_clock_mhz_before",
                                                "sm_clock_mhz_after",
                                                "clock_drift_flag",
                                                "status"};
const std::vector<std::string> kCountsRequired = {"schema_version", "run_id", "config_id", "counts"};

void check_schema(const CsvTable& t, const CsvTable::Row& r) {
  const std::int64_t v = t.integer(r, "schema_version");
  if (v < kMinMeasurementSchemaVersion || v > kMeasurementSchemaVersion)
    t.fail(r, "schema_version",
           fmt::format("schema_version {} is not supported (this moesim reads versions {} to {}); re-export the run "
                       "or update moesim",
                       v, kMinMeasurementSchemaVersion, kMeasurementSchemaVersion));
}

/// An optional numeric column: 0 when the column is absent or the field empty.
double optional_num(const CsvTable& t, const CsvTable::Row& r, const char* col) {
  if (!t.has_column(col) || t.str(r, col).empty()) return 0;
  return t.num(r, col);
}

std::vector<std::int64_t> parse_counts(const CsvTable& t, const CsvTable::Row& r) {
  const std::string& s = t.str(r, "counts");
  std::vector<std::int64_t> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    if (i >= s.size()) break;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    std::int64_t v = 0;
    bool ok = j > i;
    for (std::size_t c = i; c < j && ok; ++c) {
      if (s[c] < '0' || s[c] > '9' || v > (std::int64_t{1} << 40))
        ok = false;
      else
        v = v * 10 + (s[c] - '0');
    }
    if (!ok) t.fail(r, "counts", fmt::format("'{}' is not a non-negative row count", s.substr(i, j - i)));
    out.push_back(v);
    i = j;
  }
  if (out.empty()) t.fail(r, "counts", "empty count vector");
  return out;
}

/// Tile of a GEMM row: from impl_config when it names BM/BN, else the default 128x128.
TileConfig tile_of(const Measurement& m, bool* recorded) {
  if (auto t = TileConfig::parse(m.impl_config)) {
    if (recorded) *recorded = true;
    return *t;
  }
  if (recorded) *recorded = false;
  return TileConfig{128, 128};
}

std::string group_key(const Measurement& m) {
  if (kind_of(m.family) == ModelKind::kGemm)
    return fmt::format("{}/{}/{}/{}", m.family, m.impl, to_string(m.dtype_in), tile_of(m, nullptr).str());
  return fmt::format("{}/{}/{}", m.family, m.impl, to_string(m.dtype_in));
}

/// Per-row quantities the fit needs, computed once.
struct Prepared {
  const Measurement* m = nullptr;
  GemmFeatures f;
  double x = 0;  ///< mean rows per active expert (GEMM) or bytes (bandwidth)
};

Prepared prepare(const Measurement& m, ModelKind kind, TileConfig tile) {
  Prepared p;
  p.m = &m;
  if (kind == ModelKind::kGemm) {
    p.f = gemm_features(m.counts, m.k, m.n, m.dtype_in, m.dtype_out, tile);
    p.x = p.f.active > 0 ? p.f.rows / p.f.active : 0;
  } else {
    p.x = m.bytes_min;
  }
  return p;
}

/// An efficiency above 1 beats the datasheet: physically impossible for a right GPU.
bool above_one(double v) { return v > 1.0; }

double predict_raw(const Prepared& p, ModelKind kind, const ModelParams& prm, const GpuParams& gpu) {
  if (kind == ModelKind::kGemm) return gemm_seconds(p.f, prm, gpu, p.m->dtype_in, p.m->clock_hz);
  if (kind == ModelKind::kRoofline)
    return roofline_seconds(p.m->flops, p.m->bytes_min, prm, gpu, p.m->dtype_in, p.m->clock_hz);
  return bandwidth_seconds(p.m->bytes_min, prm, gpu);
}

// Parameter vector <-> ModelParams. Every parameter is fitted in log space (positivity); the
// blend exponent as log(p - 1) so that p > 1.
std::vector<double> to_theta(const ModelParams& p, ModelKind kind) {
  auto lg = [](double v) { return std::log(std::max(v, 1e-12)); };
  if (kind == ModelKind::kGemm) return {lg(p.eta), lg(p.mem_eff), lg(p.t0_s), lg(p.p - 1), lg(p.sat_frac)};
  if (kind == ModelKind::kRoofline) return {lg(p.eta), lg(p.mem_eff), lg(p.t0_s), lg(p.p - 1)};
  return {lg(p.mem_eff), lg(p.t0_s)};
}

ModelParams from_theta(const std::vector<double>& th, ModelKind kind, TileConfig tile) {
  ModelParams p;
  p.tile = tile;
  if (kind == ModelKind::kGemm) {
    p.eta = std::exp(th[0]);
    p.mem_eff = std::exp(th[1]);
    p.t0_s = std::exp(th[2]);
    p.p = 1 + std::exp(th[3]);
    p.sat_frac = std::exp(th[4]);
  } else if (kind == ModelKind::kRoofline) {
    p.eta = std::exp(th[0]);
    p.mem_eff = std::exp(th[1]);
    p.t0_s = std::exp(th[2]);
    p.p = 1 + std::exp(th[3]);
  } else {
    p.mem_eff = std::exp(th[0]);
    p.t0_s = std::exp(th[1]);
  }
  return p;
}

double ape(double pred, double meas) { return std::fabs(pred - meas) / meas * 100.0; }

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  if (n == 0) return 0;
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Octave bins of x with the median training residual log(meas/pred); bins with fewer than
/// three points are left out (factor 1 there).
std::vector<ResidualBin> residual_table(const std::vector<Prepared>& rows, const std::vector<double>& pred) {
  std::map<int, std::vector<double>> bins;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].x <= 0) continue;
    const int b = static_cast<int>(std::floor(std::log2(rows[i].x)));
    bins[b].push_back(std::log(rows[i].m->time_s / pred[i]));
  }
  std::vector<ResidualBin> out;
  for (const auto& [b, v] : bins) {
    if (v.size() < 3) continue;
    out.push_back({std::ldexp(1.0, b), std::ldexp(1.0, b + 1), median_of(v), static_cast<int>(v.size())});
  }
  return out;
}

MeasurementSet load_impl(const std::string& dir, const CalibrateOptions& opt) {
  opt.gpu.validate();
  MeasurementSet set;
  set.dir = dir;
  if (!std::filesystem::is_directory(dir)) fail_at(dir, 0, "", "measurement directory does not exist");

  // runs.csv
  const CsvTable runs = CsvTable::load(join_path(dir, "runs.csv"));
  runs.require_columns(kRunsRequired);
  std::map<std::string, std::size_t> run_index;
  for (const CsvTable::Row& r : runs.rows()) {
    check_schema(runs, r);
    RunInfo ri;
    ri.run_id = runs.str(r, "run_id");
    ri.git_commit = runs.str(r, "git_commit");
    ri.gpu_name = runs.str(r, "gpu_name");
    ri.sm_count = static_cast<int>(runs.integer(r, "sm_count"));
    ri.sm_clock_probed_mhz = runs.str(r, "sm_clock_probed_mhz").empty() ? 0 : runs.num(r, "sm_clock_probed_mhz");
    ri.hbm_gbps_probed = optional_num(runs, r, "hbm_gbps_probed");
    ri.hbm_bytes = optional_num(runs, r, "hbm_bytes");
    ri.line = r.line;
    if (ri.run_id.empty()) runs.fail(r, "run_id", "empty run_id");
    if (run_index.count(ri.run_id)) runs.fail(r, "run_id", fmt::format("duplicate run_id '{}'", ri.run_id));
    if (!set.runs.empty()) {
      const RunInfo& first = set.runs.front();
      if (ri.gpu_name != first.gpu_name || ri.sm_count != first.sm_count)
        runs.fail(r, "gpu_name",
                  fmt::format("mixed GPUs in one fit: this run is '{}' ({} SMs) but {}:{} is '{}' ({} SMs); "
                              "calibrate each GPU separately",
                              ri.gpu_name, ri.sm_count, runs.file(), first.line, first.gpu_name, first.sm_count));
    }
    if (ri.sm_count != opt.gpu.sm_count)
      runs.fail(r, "sm_count",
                fmt::format("the run's GPU has {} SMs but the GPU parameters given for '{}' have {}", ri.sm_count,
                            opt.gpu.name, opt.gpu.sm_count));
    // A device that copies faster than the given GPU's datasheet bandwidth is another GPU (H200
    // data under H100 parameters fitted memory efficiencies above 1 before this check).
    if (ri.hbm_gbps_probed * 1e9 > 1.05 * opt.gpu.hbm_bytes_per_s)
      runs.fail(r, "hbm_gbps_probed",
                fmt::format("the run's GPU copied {:.0f} GB/s, above the {:.0f} GB/s datasheet bandwidth of '{}': "
                            "these measurements are not from that GPU (pass the right --gpu)",
                            ri.hbm_gbps_probed, opt.gpu.hbm_bytes_per_s / 1e9, opt.gpu.name));
    run_index[ri.run_id] = set.runs.size();
    set.runs.push_back(std::move(ri));
  }
  if (set.runs.empty()) fail_at(runs.file(), 0, "", "no runs: runs.csv has a header but no rows");

  // counts.csv (needed by GEMM rows only; loaded when present)
  std::map<std::pair<std::string, std::int64_t>, std::vector<std::int64_t>> counts;
  const std::string counts_path = join_path(dir, "counts.csv");
  const bool have_counts = std::filesystem::exists(counts_path);
  if (have_counts) {
    const CsvTable ct = CsvTable::load(counts_path);
    ct.require_columns(kCountsRequired);
    for (const CsvTable::Row& r : ct.rows()) {
      check_schema(ct, r);
      counts[{ct.str(r, "run_id"), ct.integer(r, "config_id")}] = parse_counts(ct, r);
    }
  }

  // measurements.csv
  const CsvTable mt = CsvTable::load(join_path(dir, "measurements.csv"));
  mt.require_columns(kMeasRequired);
  for (const CsvTable::Row& r : mt.rows()) {
    check_schema(mt, r);
    ++set.rows_read;
    const std::string& status = mt.str(r, "status");
    if (status != "ok") {
      ++set.skipped[fmt::format("status={}", status.empty() ? "(empty)" : status)];
      continue;
    }
    Measurement m;
    m.file = mt.file();
    m.line = r.line;
    m.run_id = mt.str(r, "run_id");
    const auto run = run_index.find(m.run_id);
    if (run == run_index.end()) mt.fail(r, "run_id", fmt::format("run_id '{}' does not appear in runs.csv", m.run_id));
    if (mt.str(r, "l2_mode") != opt.l2_mode) {
      ++set.skipped[fmt::format("l2_mode={}", mt.str(r, "l2_mode"))];
      continue;
    }
    if (mt.str(r, "timing_method") != opt.timing_method) {
      ++set.skipped[fmt::format("timing_method={}", mt.str(r, "timing_method"))];
      continue;
    }
    if (opt.skip_clock_drift && mt.flag(r, "clock_drift_flag")) {
      ++set.skipped["clock_drift_flag=1"];
      continue;
    }
    m.family = mt.str(r, "kernel_family");
    if (kind_of(m.family) == ModelKind::kNone) {
      if (opt.strict)
        mt.fail(r, "kernel_family",
                fmt::format("kernel family '{}' has no cost model to fit (--strict: every usable row must be "
                            "fitted; without --strict such rows are skipped and counted)",
                            m.family));
      ++set.skipped[fmt::format("kernel_family={} (no cost model)", m.family)];
      continue;
    }
    m.config_id = mt.integer(r, "config_id");
    m.heldout = mt.flag(r, "heldout");
    m.impl = mt.str(r, "impl");
    if (m.impl.empty()) mt.fail(r, "impl", "empty implementation name");
    m.impl_config = mt.str(r, "impl_config");
    const std::string& din = mt.str(r, "dtype_in");
    const auto d_in = parse_dtype(din);
    if (!d_in) mt.fail(r, "dtype_in", fmt::format("unknown dtype '{}'", din));
    m.dtype_in = *d_in;
    const std::string& dout = mt.str(r, "dtype_out");
    if (dout.empty())
      m.dtype_out = m.dtype_in;
    else if (auto d = parse_dtype(dout))
      m.dtype_out = *d;
    else
      mt.fail(r, "dtype_out", fmt::format("unknown dtype '{}'", dout));
    const double t_us = mt.num(r, "time_us_median");
    if (!(t_us > 0)) mt.fail(r, "time_us_median", fmt::format("time {} us must be positive on an ok row", t_us));
    m.time_s = t_us * 1e-6;
    const std::string& cb = mt.str(r, "sm_clock_mhz_before");
    const std::string& ca = mt.str(r, "sm_clock_mhz_after");
    const double before = cb.empty() ? 0 : mt.num(r, "sm_clock_mhz_before");
    const double after = ca.empty() ? 0 : mt.num(r, "sm_clock_mhz_after");
    double mhz = before > 0 && after > 0 ? 0.5 * (before + after) : std::max(before, after);
    if (!(mhz > 0)) mhz = set.runs[run->second].sm_clock_probed_mhz;
    if (!(mhz > 0))
      mt.fail(r, "sm_clock_mhz_before",
              "no SM clock reading (before/after empty and runs.csv sm_clock_probed_mhz missing): cannot normalise");
    m.clock_hz = mhz * 1e6;
    if (kind_of(m.family) == ModelKind::kGemm) {
      m.k = mt.integer(r, "K");
      m.n = mt.integer(r, "N");
      if (m.k <= 0) mt.fail(r, "K", "K must be positive for a GEMM row");
      if (m.n <= 0) mt.fail(r, "N", "N must be positive for a GEMM row");
      if (!have_counts) fail_at(counts_path, 0, "", "counts.csv is missing but the run has GEMM rows");
      const auto c = counts.find({m.run_id, m.config_id});
      if (c == counts.end())
        mt.fail(r, "config_id", fmt::format("no counts.csv row for run_id '{}' config_id {}", m.run_id, m.config_id));
      m.counts = c->second;
      // The count vector has one entry per local expert; a short or long row would silently
      // describe another GEMM (the harness writes num_experts_local next to every GEMM row).
      if (mt.has_column("num_experts_local") && !mt.str(r, "num_experts_local").empty()) {
        const std::int64_t experts = mt.integer(r, "num_experts_local");
        if (experts < 1) mt.fail(r, "num_experts_local", fmt::format("{} experts: must be >= 1", experts));
        if (static_cast<std::int64_t>(m.counts.size()) != experts)
          mt.fail(r, "num_experts_local",
                  fmt::format("{} local experts, but the counts.csv row for run_id '{}' config_id {} has {} "
                              "value(s) (one row count per local expert)",
                              experts, m.run_id, m.config_id, m.counts.size()));
      }
    } else {
      m.bytes_min = mt.num(r, "bytes_min");
      if (!(m.bytes_min > 0)) mt.fail(r, "bytes_min", "bytes_min must be positive for a bandwidth-model row");
      if (kind_of(m.family) == ModelKind::kRoofline) {
        if (!mt.has_column("flops")) mt.fail(r, "flops", "attention rows need the flops column");
        m.flops = mt.num(r, "flops");
        if (!(m.flops > 0)) mt.fail(r, "flops", "flops must be positive for an attention row");
      }
    }
    set.rows.push_back(std::move(m));
  }
  if (set.rows.empty()) {
    std::string why;
    for (const auto& [reason, n] : set.skipped) why += fmt::format("; {} skipped: {}", n, reason);
    fail_at(mt.file(), 0, "",
            fmt::format("no usable measurement rows ({} read{}); nothing to fit (wanted status=ok, l2_mode={}, "
                        "timing_method={})",
                        set.rows_read, why, opt.l2_mode, opt.timing_method));
  }
  return set;
}

/// Rows of a measurement set grouped by profile key (sorted by key: deterministic order).
std::map<std::string, std::vector<const Measurement*>> group_rows(const MeasurementSet& set) {
  std::map<std::string, std::vector<const Measurement*>> g;
  for (const Measurement& m : set.rows) g[group_key(m)].push_back(&m);
  return g;
}

double median_clock(const MeasurementSet& set) {
  std::vector<double> c;
  for (const Measurement& m : set.rows) c.push_back(m.clock_hz);
  return median_of(c);
}

void fill_provenance(CostProfile& p, const MeasurementSet& set) {
  p.gpu_name = set.runs.front().gpu_name;
  p.sm_count = set.runs.front().sm_count;
  p.clock_hz = median_clock(set);
  p.source = set.dir;
  for (const RunInfo& r : set.runs) p.runs.push_back({r.run_id, r.git_commit});
  p.rows_read = set.rows_read;
  p.rows_used = static_cast<int>(set.rows.size());
  for (const auto& [reason, n] : set.skipped) p.rows_skipped += n;
}

void evaluate(const ProfileEntry& e, ModelKind kind, const std::vector<Prepared>& rows, const GpuParams& gpu,
              bool use_residual, std::vector<PointError>& out) {
  for (const Prepared& p : rows) {
    double pred = predict_raw(p, kind, e.params, gpu);
    if (use_residual) pred *= e.residual_factor(p.x);
    PointError pe;
    pe.key = e.key();
    pe.file = p.m->file;
    pe.line = p.m->line;
    pe.config_id = p.m->config_id;
    pe.x = p.x;
    pe.measured_us = p.m->time_s * 1e6;
    pe.predicted_us = pred * 1e6;
    pe.ape = ape(pred, p.m->time_s);
    pe.heldout = p.m->heldout;
    out.push_back(pe);
  }
}

void fill_stats(ProfileEntry& e, const std::vector<PointError>& pts, std::size_t from) {
  std::vector<double> fit_ape, held_ape;
  double sq = 0;
  for (std::size_t i = from; i < pts.size(); ++i) {
    if (pts[i].heldout)
      held_ape.push_back(pts[i].ape);
    else {
      fit_ape.push_back(pts[i].ape);
      const double l = std::log(pts[i].predicted_us / pts[i].measured_us);
      sq += l * l;
    }
  }
  const ErrorSummary f = summarize(fit_ape), h = summarize(held_ape);
  e.fit.points_fit = f.n;
  e.fit.points_heldout = h.n;
  e.fit.fit_rms_log = f.n ? std::sqrt(sq / f.n) : 0;
  e.fit.fit_mape = f.mape;
  e.fit.heldout_mape = h.mape;
  e.fit.heldout_median_ape = h.median;
  e.fit.heldout_p90_ape = h.p90;
}

}  // namespace

ErrorSummary summarize(std::vector<double> v) {
  ErrorSummary s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  s.mape = sum / static_cast<double>(v.size());
  auto q = [&](double frac) {
    const double pos = frac * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
  };
  s.median = q(0.5);
  s.p90 = q(0.9);
  s.max = v.back();
  return s;
}

RunGpu read_run_gpu(const std::string& run_dir) {
  if (!std::filesystem::is_directory(run_dir)) fail_at(run_dir, 0, "", "measurement directory does not exist");
  const CsvTable runs = CsvTable::load(join_path(run_dir, "runs.csv"));
  runs.require_columns({"gpu_name", "sm_count"});
  if (runs.rows().empty()) fail_at(runs.file(), 0, "", "no runs: runs.csv has a header but no rows");
  const CsvTable::Row& r = runs.rows().front();
  RunGpu g;
  g.file = runs.file();
  g.line = r.line;
  g.gpu_name = runs.str(r, "gpu_name");
  g.sm_count = static_cast<int>(runs.integer(r, "sm_count"));
  g.hbm_bytes = optional_num(runs, r, "hbm_bytes");
  g.hbm_gbps_probed = optional_num(runs, r, "hbm_gbps_probed");
  return g;
}

std::string match_gpu(const RunGpu& run, const std::vector<GpuCandidate>& candidates, std::string* why) {
  // Model token: a letter followed by three digits (H100, H200, H800, A100, B200), lower-cased.
  std::string token;
  for (std::size_t i = 0; i + 3 < run.gpu_name.size() && token.empty(); ++i) {
    const auto is_digit = [&](std::size_t j) { return std::isdigit(static_cast<unsigned char>(run.gpu_name[j])) != 0; };
    if (std::isalpha(static_cast<unsigned char>(run.gpu_name[i])) && is_digit(i + 1) && is_digit(i + 2) &&
        is_digit(i + 3) && (i == 0 || !std::isalnum(static_cast<unsigned char>(run.gpu_name[i - 1]))))
      for (std::size_t j = i; j < i + 4; ++j)
        token += static_cast<char>(std::tolower(static_cast<unsigned char>(run.gpu_name[j])));
  }
  std::vector<std::string> hits, named;
  for (const GpuCandidate& c : candidates) {
    if (token.empty() || c.key.rfind(token, 0) != 0) continue;
    named.push_back(c.key);
    if (c.sm_count != run.sm_count) continue;
    if (run.hbm_bytes > 0 && c.hbm_bytes > 0 && std::fabs(run.hbm_bytes / c.hbm_bytes - 1) > 0.15) continue;
    hits.push_back(c.key);
  }
  if (hits.size() == 1) return hits.front();
  std::string list;
  for (const std::string& h : (hits.empty() ? named : hits)) list += (list.empty() ? "" : ", ") + h;
  if (why)
    *why = hits.empty() ? fmt::format("no catalog GPU matches '{}' ({} SMs, {:.0f} GB){}", run.gpu_name, run.sm_count,
                                      run.hbm_bytes / 1e9, list.empty() ? "" : " (same model name: " + list + ")")
                        : fmt::format("several catalog GPUs match '{}': {}", run.gpu_name, list);
  return {};
}

MeasurementSet load_measurements(const std::string& run_dir, const CalibrateOptions& options) {
  return load_impl(run_dir, options);
}

CalibrationResult fit_measurements(const MeasurementSet& set, const CalibrateOptions& opt) {
  opt.gpu.validate();
  CalibrationResult res;
  fill_provenance(res.profile, set);
  res.report.skipped = set.skipped;
  std::vector<std::string> too_few;
  for (const auto& [key, rows] : group_rows(set)) {
    const Measurement& first = *rows.front();
    const ModelKind kind = kind_of(first.family);
    bool tile_recorded = false;
    const TileConfig tile = tile_of(first, &tile_recorded);
    std::vector<Prepared> train, held;
    for (const Measurement* m : rows) (m->heldout ? held : train).push_back(prepare(*m, kind, tile));
    ModelParams init;
    if (kind == ModelKind::kGemm) {
      init = default_gemm_params(opt.gpu);
      init.tile = tile;
    } else if (first.family == "routing") {
      init = default_routing_params(opt.gpu, RoutingKind::kGateTopk);
    } else if (kind == ModelKind::kRoofline) {
      init = default_attention_params(opt.gpu, first.family == "attention_prefill" ? AttentionShape::Phase::kPrefill
                                                                                   : AttentionShape::Phase::kDecode);
    } else {
      init = default_elementwise_params(opt.gpu);
    }
    init.t0_s = std::max(init.t0_s, 1e-6);
    const std::size_t n_params = to_theta(init, kind).size();
    const std::size_t need = static_cast<std::size_t>(std::max(1, opt.min_points_per_param)) * n_params;
    if (train.size() < need) {
      const std::string msg = fmt::format(
          "{}: too few points to fit ({} non-held-out rows, need at least {} = {} per parameter x {} "
          "parameters); not fitted",
          key, train.size(), need, opt.min_points_per_param, n_params);
      if (opt.strict) fail_at(first.file, 0, "", msg);
      too_few.push_back(msg);
      continue;
    }
    // Weak prior toward the defaults keeps parameters the data cannot see (e.g. the compute
    // efficiency when every row is memory-bound) at physical values; its weight is small
    // enough not to bias parameters the data does determine.
    const std::vector<double> theta0 = to_theta(init, kind);
    constexpr double kPriorWeight = 0.01;
    auto residuals = [&](const std::vector<double>& th, std::vector<double>& r) {
      const ModelParams prm = from_theta(th, kind, tile);
      r.resize(train.size() + th.size());
      for (std::size_t i = 0; i < train.size(); ++i) {
        const double t = predict_raw(train[i], kind, prm, opt.gpu);
        if (!(t > 0) || !std::isfinite(t)) return false;
        r[i] = std::log(t / train[i].m->time_s);
      }
      for (std::size_t j = 0; j < th.size(); ++j) r[train.size() + j] = kPriorWeight * (th[j] - theta0[j]);
      return true;
    };
    // A few starts over the shape parameters (blend exponent, saturation); keep the best.
    std::vector<ModelParams> starts{init};
    if (kind == ModelKind::kGemm) {
      for (const auto& [p, s] : std::vector<std::pair<double, double>>{{1.5, 0.25}, {8.0, 1.0}, {2.0, 0.8}}) {
        ModelParams v = init;
        v.p = p;
        v.sat_frac = s;
        starts.push_back(v);
      }
    }
    LmResult best;
    bool have = false;
    for (const ModelParams& s : starts) {
      LmResult lm;
      try {
        lm = levenberg_marquardt(residuals, to_theta(s, kind));
      } catch (const std::invalid_argument&) {  // the model is not finite at this start
        continue;
      }
      if (!have || lm.cost < best.cost) {
        best = std::move(lm);
        have = true;
      }
    }
    if (!have || !std::isfinite(best.cost)) {
      const std::string msg =
          fmt::format("{}: cannot be fitted (the cost model gives no finite time for these rows); not fitted", key);
      if (opt.strict) fail_at(first.file, first.line, "", msg);
      too_few.push_back(msg);
      continue;
    }
    if (opt.strict && !best.converged)
      fail_at(first.file, first.line, "",
              fmt::format("{}: the fit did not converge in {} iterations (--strict: every group must fit)", key,
                          best.iterations));
    ProfileEntry e;
    e.family = first.family;
    e.impl = first.impl;
    e.dtype = first.dtype_in;
    e.has_tile = kind == ModelKind::kGemm;
    e.params = from_theta(best.theta, kind, tile);
    e.range_lo = 1e300;
    e.range_hi = 0;
    for (const Prepared& p : train) {
      e.range_lo = std::min(e.range_lo, p.x);
      e.range_hi = std::max(e.range_hi, p.x);
    }
    if (opt.residual_table && kind == ModelKind::kGemm) {
      std::vector<double> pred;
      for (const Prepared& p : train) pred.push_back(predict_raw(p, kind, e.params, opt.gpu));
      e.residual = residual_table(train, pred);
    }
    if (kind == ModelKind::kGemm && !tile_recorded)
      res.profile.notes.push_back(
          fmt::format("{}: impl_config '{}' names no BM/BN tile; BM128_BN128 assumed", key, first.impl_config));
    const std::size_t from = res.report.points.size();
    evaluate(e, kind, train, opt.gpu, true, res.report.points);
    evaluate(e, kind, held, opt.gpu, true, res.report.points);
    fill_stats(e, res.report.points, from);
    if (held.empty()) res.profile.notes.push_back(fmt::format("{}: no held-out rows; only fit error known", key));
    if (above_one(e.params.mem_eff) || (kind != ModelKind::kBandwidth && above_one(e.params.eta))) {
      const std::string msg = fmt::format(
          "{}: fitted {} = {:.3f} is above 1 (faster than the datasheet of '{}'): wrong --gpu, or a size measure "
          "that undercounts the work",
          key, above_one(e.params.mem_eff) ? "mem_eff" : "eta",
          above_one(e.params.mem_eff) ? e.params.mem_eff : e.params.eta, opt.gpu.name);
      if (opt.strict) fail_at(first.file, 0, "", msg);
      res.profile.notes.push_back(msg);
      res.report.warnings.push_back(msg);
    }
    res.profile.entries.push_back(std::move(e));
  }
  for (const std::string& m : too_few) {
    res.profile.notes.push_back(m);
    res.report.unfitted.push_back(m);
  }
  if (res.profile.entries.empty()) {
    std::string why;
    for (const std::string& m : too_few) why += "\n  " + m;
    fail_at(join_path(set.dir, "measurements.csv"), 0, "", "no kernel family could be fitted:" + why);
  }
  return res;
}

CalibrationResult calibrate(const std::string& run_dir, const CalibrateOptions& options) {
  return fit_measurements(load_measurements(run_dir, options), options);
}

FitReport validate_profile(const CostProfile& profile, const std::string& run_dir, const CalibrateOptions& opt) {
  const MeasurementSet set = load_measurements(run_dir, opt);
  if (profile.sm_count != 0 && profile.sm_count != set.runs.front().sm_count)
    fail_at(join_path(run_dir, "runs.csv"), set.runs.front().line, "column 'sm_count'",
            fmt::format("the profile was fitted on '{}' ({} SMs), these measurements are from '{}' ({} SMs)",
                        profile.gpu_name, profile.sm_count, set.runs.front().gpu_name, set.runs.front().sm_count));
  FitReport rep;
  rep.skipped = set.skipped;
  for (const auto& [key, rows] : group_rows(set)) {
    const ProfileEntry* e = profile.find(key);
    if (!e) {
      rep.unfitted.push_back(fmt::format("{}: no profile entry ({} rows not evaluated)", key, rows.size()));
      continue;
    }
    const ModelKind kind = kind_of(e->family);
    std::vector<Prepared> prepared;
    for (const Measurement* m : rows) prepared.push_back(prepare(*m, kind, e->params.tile));
    evaluate(*e, kind, prepared, opt.gpu, true, rep.points);
  }
  if (rep.points.empty())
    fail_at(join_path(run_dir, "measurements.csv"), 0, "", "no measurement row matches any entry of the profile");
  return rep;
}

void print_report(const CostProfile& profile, const FitReport& report, std::ostream& out) {
  out << fmt::format("cost profile: {} ({} SMs, median clock {:.0f} MHz), source {}\n", profile.gpu_name,
                     profile.sm_count, profile.clock_hz / 1e6, profile.source);
  int skipped = 0;
  for (const auto& [r, n] : report.skipped) skipped += n;
  out << fmt::format("rows: {} evaluated, {} skipped\n", report.points.size(), skipped);
  for (const auto& [r, n] : report.skipped) out << fmt::format("  skipped {:>6}  {}\n", n, r);
  // Per entry key (family/impl/dtype/tile); targets from the calibration issue.
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> by_key;  // fit, heldout
  for (const PointError& p : report.points) (p.heldout ? by_key[p.key].second : by_key[p.key].first).push_back(p.ape);
  out << fmt::format("\n{:<48} {:>6} {:>8} | {:>6} {:>8} {:>8} {:>8}  {}\n", "entry (family/impl/dtype/tile)", "fit n",
                     "fit MAPE", "held n", "MAPE", "median", "P90", "target");
  for (const auto& [key, v] : by_key) {
    const ErrorSummary f = summarize(v.first), h = summarize(v.second);
    std::string target = "-";
    const bool gemm = key.rfind("grouped_gemm", 0) == 0;
    const bool routing = key.rfind("routing", 0) == 0;
    if (h.n == 0)
      target = gemm || routing ? "no held-out rows" : "-";
    else if (gemm)
      target = h.mape <= 5 && h.p90 <= 10 ? "PASS (MAPE<=5, P90<=10)" : "FAIL (MAPE<=5, P90<=10)";
    else if (routing)
      target = h.mape <= 10 ? "PASS (MAPE<=10)" : "FAIL (MAPE<=10)";
    out << fmt::format("{:<48} {:>6} {:>7.2f}% | {:>6} {:>7.2f}% {:>7.2f}% {:>7.2f}%  {}\n", key, f.n, f.mape, h.n,
                       h.mape, h.median, h.p90, target);
  }
  // Per family (all impls, dtypes and tiles), held-out only.
  std::map<std::string, std::vector<double>> by_family;
  for (const PointError& p : report.points)
    if (p.heldout) by_family[p.key.substr(0, p.key.find('/'))].push_back(p.ape);
  if (!by_family.empty()) {
    out << "\nheld-out error per family:\n";
    for (const auto& [fam, v] : by_family) {
      const ErrorSummary s = summarize(v);
      out << fmt::format("  {:<24} n={:<5} MAPE {:.2f}%  median {:.2f}%  P90 {:.2f}%  max {:.2f}%\n", fam, s.n, s.mape,
                         s.median, s.p90, s.max);
    }
  }
  std::vector<const PointError*> worst;
  bool held = false;
  for (const PointError& p : report.points) held = held || p.heldout;
  for (const PointError& p : report.points)
    if (p.heldout == held) worst.push_back(&p);
  std::stable_sort(worst.begin(), worst.end(),
                   [](const PointError* a, const PointError* b) { return a->ape > b->ape; });
  if (worst.size() > 10) worst.resize(10);
  out << fmt::format("\nworst {} {} points:\n", worst.size(), held ? "held-out" : "fitted (no held-out rows)");
  for (const PointError* p : worst)
    out << fmt::format("  {:>7.2f}%  meas {:>10.3f} us  pred {:>10.3f} us  x={:<10g} {}  ({}:{}, config {})\n", p->ape,
                       p->measured_us, p->predicted_us, p->x, p->key, p->file, p->line, p->config_id);
  if (!report.unfitted.empty()) {
    out << "\nnot fitted / not evaluated:\n";
    for (const std::string& u : report.unfitted) out << "  " << u << "\n";
  }
  if (!report.warnings.empty()) {
    out << "\nwarnings:\n";
    for (const std::string& w : report.warnings) out << "  " << w << "\n";
  }
}

void write_points_csv(const FitReport& report, std::ostream& out) {
  out << "key,heldout,x,measured_us,predicted_us,ape_pct,file,line,config_id\n";
  for (const PointError& p : report.points)
    out << fmt::format("{},{},{},{},{},{},\"{}\",{},{}\n", p.key, p.heldout ? 1 : 0, p.x, p.measured_us, p.predicted_us,
                       p.ape, p.file, p.line, p.config_id);
}

}  // namespace moesim::models::cost
