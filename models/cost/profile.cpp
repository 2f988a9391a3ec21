#include "models/cost/profile.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <ostream>
#include <sstream>
#include <stdexcept>

#include "config/reader.hpp"
#include "sim/output_file.hpp"

namespace moesim::models::cost {

namespace {
bool is_gemm_family(const std::string& f) { return f.find("gemm") != std::string::npos; }

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string time_text(double seconds) {
  const double ps = std::round(seconds * 1e12);
  return sim::to_string(sim::SimTime::from_ps(static_cast<std::int64_t>(std::max(0.0, ps))));
}
}  // namespace

std::string ProfileEntry::key() const {
  if (has_tile) return fmt::format("{}/{}/{}/{}", family, impl, to_string(dtype), params.tile.str());
  return fmt::format("{}/{}/{}", family, impl, to_string(dtype));
}

double ProfileEntry::residual_factor(double x) const {
  if (residual.empty() || !(x >= range_lo && x <= range_hi)) return 1.0;
  for (const ResidualBin& b : residual)
    if (x >= b.m_lo && (x < b.m_hi || (x == b.m_hi && b.m_hi == range_hi))) return std::exp(b.log_factor);
  return 1.0;
}

const ProfileEntry* CostProfile::find(const std::string& key) const {
  for (const ProfileEntry& e : entries)
    if (e.key() == key) return &e;
  return nullptr;
}

void write_profile(const CostProfile& p, std::ostream& out) {
  out << "# moesim kernel cost profile, written by `moesim calibrate`. Do not edit by hand: re-run calibrate.\n";
  out << "# params: eta = fraction of peak tensor FLOP/s, mem_eff = fraction of datasheet HBM bandwidth,\n";
  out << "# t0 = fixed overhead, p = compute/memory blend exponent, sat_frac = busy-SM fraction saturating HBM.\n";
  out << "# fit: errors in percent of measured time; heldout_* are on rows never used for fitting.\n";
  out << fmt::format("format_version: {}\n", CostProfile::kFormatVersion);
  out << "gpu:\n";
  out << fmt::format("  name: {}\n", quoted(p.gpu_name));
  out << fmt::format("  sm_count: {}\n", p.sm_count);
  out << fmt::format("  clock_mhz: {}\n", p.clock_hz / 1e6);
  out << "provenance:\n";
  out << fmt::format("  source: {}\n", quoted(p.source));
  out << fmt::format("  rows_read: {}\n  rows_used: {}\n  rows_skipped: {}\n", p.rows_read, p.rows_used,
                     p.rows_skipped);
  out << "  runs:\n";
  for (const RunProvenance& r : p.runs)
    out << fmt::format("    - {{run_id: {}, git_commit: {}}}\n", quoted(r.run_id), quoted(r.git_commit));
  if (p.runs.empty()) out << "    []\n";
  out << "  notes:" << (p.notes.empty() ? " []\n" : "\n");
  for (const std::string& n : p.notes) out << fmt::format("    - {}\n", quoted(n));
  out << "entries:" << (p.entries.empty() ? " []\n" : "\n");
  for (const ProfileEntry& e : p.entries) {
    out << fmt::format("  - family: {}\n    impl: {}\n    dtype: {}\n", quoted(e.family), quoted(e.impl),
                       to_string(e.dtype));
    if (e.has_tile) out << fmt::format("    tile: {{bm: {}, bn: {}}}\n", e.params.tile.bm, e.params.tile.bn);
    const ModelParams& m = e.params;
    if (is_gemm_family(e.family))
      out << fmt::format("    params: {{eta: {}, mem_eff: {}, t0: {}, p: {}, sat_frac: {}}}\n", m.eta, m.mem_eff,
                         time_text(m.t0_s), m.p, m.sat_frac);
    else if (e.family.rfind("attention", 0) == 0)
      out << fmt::format("    params: {{eta: {}, mem_eff: {}, t0: {}, p: {}}}\n", m.eta, m.mem_eff, time_text(m.t0_s),
                         m.p);
    else
      out << fmt::format("    params: {{mem_eff: {}, t0: {}}}\n", m.mem_eff, time_text(m.t0_s));
    const FitStats& f = e.fit;
    out << fmt::format(
        "    fit: {{points: {}, heldout: {}, rms_log: {}, mape_pct: {}, heldout_mape_pct: {}, "
        "heldout_median_ape_pct: {}, heldout_p90_ape_pct: {}}}\n",
        f.points_fit, f.points_heldout, f.fit_rms_log, f.fit_mape, f.heldout_mape, f.heldout_median_ape,
        f.heldout_p90_ape);
    out << fmt::format("    range: {{lo: {}, hi: {}}}\n", e.range_lo, e.range_hi);
    out << "    residual:" << (e.residual.empty() ? " []\n" : "\n");
    for (const ResidualBin& b : e.residual)
      out << fmt::format("      - {{lo: {}, hi: {}, log_factor: {}, points: {}}}\n", b.m_lo, b.m_hi, b.log_factor,
                         b.points);
  }
}

void write_profile_file(const CostProfile& p, const std::string& path) {
  std::ostringstream s;
  write_profile(p, s);
  sim::write_file_atomic(path, s.str());  // checked; all or nothing
}

namespace {
CostProfile read_profile(const config::Document& doc) {
  config::Diagnostics diags;
  const config::Node root = doc.root(diags);
  CostProfile p;
  const std::int64_t version = root.req_int("format_version");
  if (diags.empty() && version != CostProfile::kFormatVersion)
    root.error_at("format_version", fmt::format("unsupported cost profile format_version {} (this moesim reads {})",
                                                version, CostProfile::kFormatVersion));
  const config::Node gpu = root.child("gpu");
  if (gpu.defined()) {
    p.gpu_name = gpu.req_string("name");
    p.sm_count = static_cast<int>(gpu.req_int("sm_count", config::Range::between(1, 1 << 20)));
    p.clock_hz = gpu.req_double("clock_mhz", config::Range::positive()) * 1e6;
    gpu.finish();
  } else {
    root.error_at("gpu", "missing required key");
  }
  const config::Node prov = root.child("provenance");
  if (prov.defined()) {
    p.source = prov.opt_string("source", "");
    p.rows_read = static_cast<int>(prov.opt_int("rows_read", 0, config::Range::between(0, 1 << 30)));
    p.rows_used = static_cast<int>(prov.opt_int("rows_used", 0, config::Range::between(0, 1 << 30)));
    p.rows_skipped = static_cast<int>(prov.opt_int("rows_skipped", 0, config::Range::between(0, 1 << 30)));
    if (prov.has("runs"))
      for (const config::Node& r : prov.child("runs").items()) {
        p.runs.push_back({r.req_string("run_id"), r.opt_string("git_commit", "")});
        r.finish();
      }
    if (prov.has("notes"))
      for (const config::Node& n : prov.child("notes").items()) p.notes.push_back(n.as_string());
    prov.finish();
  }
  const config::Node entries = root.child("entries");
  if (!entries.defined())
    root.error_at("entries", "missing required key");
  else
    for (const config::Node& en : entries.items()) {
      ProfileEntry e;
      e.family = en.req_string("family");
      e.impl = en.req_string("impl");
      const std::string dt = en.req_string("dtype");
      if (auto d = parse_dtype(dt))
        e.dtype = *d;
      else if (!dt.empty())
        en.error_at("dtype", fmt::format("unknown dtype '{}' (expected fp8, bf16, fp16, tf32 or fp32)", dt));
      if (en.has("tile")) {
        const config::Node t = en.child("tile");
        e.has_tile = true;
        e.params.tile.bm = static_cast<int>(t.req_int("bm", config::Range::between(1, 4096)));
        e.params.tile.bn = static_cast<int>(t.req_int("bn", config::Range::between(1, 4096)));
        t.finish();
      }
      const config::Node prm = en.child("params");
      if (!prm.defined())
        en.error_at("params", "missing required key");
      else {
        const bool gemm = is_gemm_family(e.family);
        const bool attn = e.family.rfind("attention", 0) == 0;
        if (gemm || attn) {
          e.params.eta = prm.req_double("eta", config::Range::positive());
          e.params.p = prm.req_double("p", config::Range::at_least(1.0));
        }
        if (gemm) e.params.sat_frac = prm.req_double("sat_frac", config::Range::positive());
        e.params.mem_eff = prm.req_double("mem_eff", config::Range::positive());
        e.params.t0_s = prm.req_time("t0").to_s();
        prm.finish();
      }
      if (en.has("fit")) {
        const config::Node f = en.child("fit");
        e.fit.points_fit = static_cast<int>(f.opt_int("points", 0, config::Range::between(0, 1 << 30)));
        e.fit.points_heldout = static_cast<int>(f.opt_int("heldout", 0, config::Range::between(0, 1 << 30)));
        e.fit.fit_rms_log = f.opt_double("rms_log", 0);
        e.fit.fit_mape = f.opt_double("mape_pct", 0);
        e.fit.heldout_mape = f.opt_double("heldout_mape_pct", 0);
        e.fit.heldout_median_ape = f.opt_double("heldout_median_ape_pct", 0);
        e.fit.heldout_p90_ape = f.opt_double("heldout_p90_ape_pct", 0);
        f.finish();
      }
      if (en.has("range")) {
        const config::Node r = en.child("range");
        e.range_lo = r.req_double("lo", config::Range::non_negative());
        e.range_hi = r.req_double("hi", config::Range::non_negative());
        if (e.range_hi < e.range_lo) r.error("range.hi must be >= range.lo");
        r.finish();
      }
      if (en.has("residual"))
        for (const config::Node& b : en.child("residual").items()) {
          ResidualBin rb;
          rb.m_lo = b.req_double("lo");
          rb.m_hi = b.req_double("hi");
          rb.log_factor = b.req_double("log_factor", config::Range::between(-5, 5));
          rb.points = static_cast<int>(b.opt_int("points", 0, config::Range::between(0, 1 << 30)));
          b.finish();
          e.residual.push_back(rb);
        }
      en.finish();
      p.entries.push_back(std::move(e));
    }
  root.finish();
  diags.throw_if_any();
  return p;
}
}  // namespace

CostProfile read_profile_file(const std::string& path) { return read_profile(config::Document::load_file(path)); }

CostProfile read_profile_string(const std::string& text, const std::string& name) {
  return read_profile(config::Document::load_string(text, name));
}

}  // namespace moesim::models::cost
