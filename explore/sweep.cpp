#include "explore/sweep.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <optional>
#include <set>
#include <utility>

#include "config/input_file.hpp"
#include "config/reader.hpp"
#include "engine/run.hpp"
#include "explore/csv.hpp"
#include "models/model_spec.hpp"
#include "sim/rng.hpp"

namespace moesim::explore {

namespace {

using config::Diagnostic;
using config::Node;
using config::Range;

constexpr std::size_t kMaxPoints = 1000000;  // a larger product is almost surely a mistake
constexpr std::size_t kMaxErrors = 20;       // distinct problems listed before "... and N more"

/// `p` equals `q` or one lies inside the other ("model" and "model.experts").
bool paths_overlap(const std::string& p, const std::string& q) {
  const auto under = [](const std::string& a, const std::string& b) {
    return a.size() > b.size() && a.compare(0, b.size(), b) == 0 && (a[b.size()] == '.' || a[b.size()] == '[');
  };
  return p == q || under(p, q) || under(q, p);
}

/// Axis values match if written the same or equal as numbers ("1" and "1.0").
bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  const auto num = [](const std::string& s) -> std::optional<double> {
    if (s.empty()) return std::nullopt;
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size()) return std::nullopt;
    return v;
  };
  const auto x = num(a);
  const auto y = num(b);
  return x && y && *x == *y;
}

/// One exclude entry: a point is excluded when, for every condition, its value index on the
/// condition's axis is one of the listed ones.
struct Exclude {
  std::vector<std::pair<std::size_t, std::set<std::size_t>>> conditions;  // (axis, value indices)
};

/// Where each swept path's values live in the sweep file, for re-reading them per point.
struct AxisSource {
  std::string key;      ///< key under `axes:`
  bool linked = false;  ///< a mapping of paths to lists
};

/// The sweep file as read once (errors collected), before expanding the product.
struct Parsed {
  std::string base_file;                                       // "" for inline
  std::vector<std::pair<std::string, std::string>> set_paths;  // (path, key under set:)
  std::vector<AxisSource> sources;
  std::vector<Exclude> excludes;
  std::optional<std::uint64_t> seed;
  config::Location exclude_loc;
  config::Location axes_loc;
  std::vector<config::Location> column_locs;  // each swept path's value list
};

bool safe_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool safe_name(const std::string& n) {
  return !n.empty() && n.size() <= 100 && n[0] != '.' && std::all_of(n.begin(), n.end(), safe_name_char);
}

std::string sanitized_name(std::string n) {
  for (char& c : n)
    if (!safe_name_char(c)) c = '_';
  if (n.empty() || n[0] == '.') n.insert(n.begin(), '_');
  if (n.size() > 100) n.resize(100);
  return n;
}

std::string resolve_relative(const std::string& sweep_file, const std::string& path) {
  const std::filesystem::path p(path);
  if (p.is_absolute()) return path;
  return (std::filesystem::path(sweep_file).parent_path() / p).lexically_normal().string();
}

/// The catalog file of a model name, or "" when not found (the scenario parser then reports
/// the unknown name itself).
std::string model_catalog_file(const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string dir = models::default_model_catalog_dir();
  if (!fs::is_directory(dir, ec)) return {};
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".yaml") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    try {
      const config::Document d = config::Document::load_file(f);
      config::Diagnostics diags;
      if (d.root(diags).child("name").text() == name) return f;
    } catch (const config::ConfigError&) {
      continue;
    }
  }
  return {};
}

std::string point_description(const Sweep& sw, const std::vector<std::string>& labels) {
  std::string out;
  for (std::size_t c = 0; c < sw.columns.size(); ++c)
    fmt::format_to(std::back_inserter(out), "{}{}={}", c == 0 ? "" : ", ", sw.columns[c], labels[c]);
  return out;
}

Parsed read_sweep_file(const config::Document& doc, Sweep& sw) {
  Parsed ps;
  config::Diagnostics diags;
  const Node root = doc.root(diags);
  if (!root.is_map()) {
    root.error(
        "a sweep must be a mapping with keys scenario and axes (optional: name, set, exclude, repeats, seed, seeds)");
    diags.throw_if_any();
  }
  // The name is the default results directory (results/<name>): a name that could leave it
  // (`../x`, `/abs`) is refused; one taken from the file name is made safe.
  if (root.has("name")) {
    sw.name = root.req_string("name");
    if (!sw.name.empty() && !safe_name(sw.name))
      root.child("name").error(fmt::format(
          "'{}' cannot name a results directory: use at most 100 letters, digits, '.', '_' or '-', not starting "
          "with '.'",
          one_line(sw.name)));
  } else {
    sw.name = sanitized_name(std::filesystem::path(sw.file).stem().string());
  }

  const Node scen = root.child("scenario");
  if (!scen.defined()) {
    root.error_at("scenario",
                  "required key is missing (a scenario file, relative to this sweep file, or an inline "
                  "scenario block)");
  } else if (scen.is_scalar()) {
    ps.base_file = resolve_relative(sw.file, scen.as_string());
    std::error_code ec;
    if (!std::filesystem::exists(ps.base_file, ec))
      scen.error("scenario file not found: " + ps.base_file);
    else if (const std::string why = config::input_file_problem(ps.base_file, config::kMaxYamlBytes); !why.empty())
      scen.error(fmt::format("{}: {}", ps.base_file, why));
    sw.base = ps.base_file;
  } else if (scen.is_map()) {
    sw.base = "<inline>";
  } else {
    scen.error("expected a scenario file name or an inline scenario mapping");
  }

  // Paths every point sets: `set:` entries, then the axes. Collected to check overlaps.
  std::vector<std::pair<std::string, Node>> fixed;  // (path, node) for set: entries
  const Node set = root.child("set");
  if (set.defined()) {
    if (!set.is_map()) {
      set.error("expected a mapping of YAML paths to values (e.g. set: { workload.global_batch: 32 })");
    } else {
      for (auto& [path, node] : set.entries()) {
        ps.set_paths.emplace_back(path, path);
        fixed.emplace_back(path, node);
      }
    }
  }

  const Node axes = root.child("axes");
  ps.axes_loc = axes.location();
  std::vector<Node> column_nodes;  // the node of each column's value list (for error locations)
  if (!axes.defined()) {
    root.error_at("axes", "required key is missing (e.g. axes: { routing.capacity_factor: [1.0, 1.5, 2.0] })");
  } else if (!axes.is_map()) {
    axes.error("expected a mapping of YAML paths to lists of values");
  } else {
    for (auto& [key, node] : axes.entries()) {
      Axis axis;
      axis.name = key;
      if (node.is_sequence()) {
        const std::vector<Node> items = node.items();
        if (items.empty()) node.error("no values: the product would be empty");
        axis.paths.push_back(key);
        for (const auto& it : items) axis.labels.push_back({one_line(it.text())});
        column_nodes.push_back(node);
        ps.sources.push_back({key, false});
      } else if (node.is_map()) {
        const auto linked = node.entries();
        if (linked.empty()) node.error("a linked axis needs at least one path: { path: [values], ... }");
        std::size_t n = 0;
        for (std::size_t k = 0; k < linked.size(); ++k) {
          const auto& [path, list] = linked[k];
          if (!list.is_sequence()) {
            list.error("expected a list of values");
            continue;
          }
          const std::vector<Node> items = list.items();
          if (k == 0) {
            n = items.size();
            axis.labels.assign(n, {});
            if (n == 0) list.error("no values: the product would be empty");
          } else if (items.size() != n) {
            list.error(
                fmt::format("has {} value(s) but '{}' has {}; linked paths take their values together, so "
                            "they need the same number",
                            items.size(), linked[0].first, n));
            continue;
          }
          axis.paths.push_back(path);
          for (std::size_t i = 0; i < items.size(); ++i) axis.labels[i].push_back(one_line(items[i].text()));
          column_nodes.push_back(list);
        }
        ps.sources.push_back({key, true});
      } else {
        node.error("expected a list of values, or a mapping of linked paths to lists of values");
      }
      if (!axis.paths.empty() && axis.size() > 0) {
        for (const auto& p : axis.paths) sw.columns.push_back(p);
        sw.axes.push_back(std::move(axis));
      } else if (!ps.sources.empty() && ps.sources.back().key == key) {
        ps.sources.pop_back();
      }
    }
    if (axes.entries().empty()) axes.error("no axes: a sweep needs at least one (e.g. routing.alpha: [0, 0.6, 1.2])");
  }

  for (const auto& n : column_nodes) ps.column_locs.push_back(n.location());

  // Path checks: no path twice, none inside another, none that a repeat's seed owns.
  for (std::size_t c = 0; c < sw.columns.size() && c < column_nodes.size(); ++c) {
    const std::string& p = sw.columns[c];
    if (p == "seed")
      column_nodes[c].error("the seed is not an axis: use repeats (each run gets its own seed) or the sweep's seed");
    for (std::size_t d = 0; d < c; ++d)
      if (paths_overlap(p, sw.columns[d]))
        column_nodes[c].error(
            fmt::format("overlaps axis path '{}' (each YAML path may be swept only once)", sw.columns[d]));
    for (const auto& [fp, fnode] : fixed)
      if (paths_overlap(p, fp)) column_nodes[c].error(fmt::format("is also fixed by set: {}", fp));
  }

  sw.repeats = static_cast<int>(root.opt_int("repeats", 1, Range::between(1, 1000000)));
  if (root.has("seed")) ps.seed = static_cast<std::uint64_t>(root.req_int("seed", Range::non_negative()));
  sw.seed_mode = root.opt_choice("seeds", {"per_run", "per_repeat"}, "per_run") == "per_repeat" ? SeedMode::kPerRepeat
                                                                                                : SeedMode::kPerRun;

  // exclude: a list of { path: value | [values], ... } combinations to skip.
  const Node ex = root.child("exclude");
  ps.exclude_loc = ex.defined() ? ex.location() : root.location();
  if (ex.defined()) {
    for (const Node& entry : ex.items()) {
      if (!entry.is_map()) {
        entry.error("expected a mapping of swept paths to a value or a list of values");
        continue;
      }
      Exclude e;
      for (auto& [path, vals] : entry.entries()) {
        const auto col = std::find(sw.columns.begin(), sw.columns.end(), path);
        if (col == sw.columns.end()) {
          std::string msg = fmt::format("'{}' is not a swept path", path);
          if (auto dym = config::did_you_mean(path, sw.columns)) msg += fmt::format(" (did you mean '{}'?)", *dym);
          entry.child(path).error(msg);
          continue;
        }
        // Which axis, and which of its paths, the column is.
        std::size_t a = 0;
        std::size_t k = 0;
        for (std::size_t c = 0, idx = static_cast<std::size_t>(col - sw.columns.begin()); a < sw.axes.size(); ++a) {
          if (idx < c + sw.axes[a].paths.size()) {
            k = idx - c;
            break;
          }
          c += sw.axes[a].paths.size();
        }
        std::vector<Node> wanted = vals.is_sequence() ? vals.items() : std::vector<Node>{vals};
        std::set<std::size_t> indices;
        for (const Node& w : wanted) {
          bool found = false;
          for (std::size_t i = 0; i < sw.axes[a].size(); ++i)
            if (same_value(sw.axes[a].labels[i][k], one_line(w.text()))) {
              indices.insert(i);
              found = true;
            }
          if (!found) w.error(fmt::format("'{}' is not one of the values of axis '{}'", w.text(), path));
        }
        e.conditions.emplace_back(a, std::move(indices));
      }
      if (!e.conditions.empty()) ps.excludes.push_back(std::move(e));
    }
  }
  root.finish();
  diags.throw_if_any();
  return ps;
}

/// Memory a parsed point holds while the sweep runs (mostly its Scenario): 2.4 KiB per point for
/// a routing-only switch-base-128 sweep on the development VM (max RSS of 200 and of 20,000
/// points, /usr/bin/time); larger models and clusters hold more, so this is rounded up.
constexpr double kBytesPerPoint = 8 * 1024;

/// Refuses a sweep beyond its resource limits (see SweepOptions::limits).
void check_sweep_limits(double cpu_s, double run_memory, std::size_t points, double runs, const SweepOptions& opts,
                        const config::Location& where, const std::string& how) {
  const int jobs = std::max(1, opts.jobs);
  const double memory = run_memory * jobs + kBytesPerPoint * static_cast<double>(points);
  const std::string what = fmt::format("the sweep's {} run(s) on {} thread(s){}", static_cast<std::uint64_t>(runs),
                                       jobs, how.empty() ? "" : " " + how);
  engine::check_limits(memory, cpu_s / jobs, *opts.limits, where, "axes", what);
}

/// The value node of column `k` of axis `a` for value `i`, read from a fresh parse of the
/// sweep file (so that every point owns its nodes).
Node axis_value(const Node& root, const AxisSource& src, const Axis& axis, std::size_t k, std::size_t i) {
  const Node a = root.child("axes").child(src.key);
  const Node list = src.linked ? a.child(axis.paths[k]) : a;
  return list.items().at(i);
}

}  // namespace

std::string Sweep::header() const {
  std::string h = "run_index,seed,status";
  if (repeats > 1) h += ",repeat";
  for (const auto& c : columns) {
    h += ',';
    h += csv_field(c);
  }
  for (const auto& m : metrics) {
    h += ',';
    h += m;
  }
  h += ",error";
  return h;
}

std::string Sweep::hash_hex() const { return fmt::format("{:016x}", hash); }

std::uint64_t run_seed(std::uint64_t base_seed, SeedMode mode, std::size_t run_index, int repeat) {
  const std::uint64_t index = mode == SeedMode::kPerRun ? run_index : static_cast<std::uint64_t>(repeat);
  return sim::derive_seed(base_seed, index);
}

Sweep load_sweep(const std::string& file, const SweepOptions& opts) {
  Sweep sw;
  sw.file = file;
  sw.overrides = opts.overrides;
  const Parsed ps = read_sweep_file(config::Document::load_file(file), sw);

  // --set on the command line fixes base values; it must not fight an axis.
  {
    config::Diagnostics diags;
    for (const auto& o : opts.overrides) {
      const std::string path = o.substr(0, o.find('='));
      for (const auto& c : sw.columns)
        if (paths_overlap(path, c))
          diags.error(config::Location{"--set " + o, 0, 0}, path, fmt::format("overlaps the swept path '{}'", c));
    }
    diags.throw_if_any();
  }

  // Enumerate the product, last axis fastest, and drop excluded combinations.
  std::size_t total = 1;
  for (const auto& a : sw.axes) {
    if (total > kMaxPoints / std::max<std::size_t>(1, a.size())) {
      throw config::ConfigError(
          {Diagnostic{ps.axes_loc, "axes", fmt::format("the product has more than {} points", kMaxPoints)}});
    }
    total *= a.size();
  }
  std::vector<std::vector<std::size_t>> combos;
  std::vector<std::size_t> idx(sw.axes.size(), 0);
  for (std::size_t n = 0; n < total; ++n) {
    bool excluded = false;
    for (const auto& e : ps.excludes) {
      bool all = true;
      for (const auto& [a, set] : e.conditions) all = all && set.count(idx[a]) > 0;
      excluded = excluded || all;
    }
    if (!excluded) combos.push_back(idx);
    for (std::size_t a = sw.axes.size(); a-- > 0;) {
      if (++idx[a] < sw.axes[a].size()) break;
      idx[a] = 0;
    }
  }
  if (combos.empty())
    throw config::ConfigError(
        {Diagnostic{ps.exclude_loc, "exclude",
                    fmt::format("every one of the {} points is excluded: the product is empty", total)}});

  // The base scenario's model, when paths go inside it but it is a catalog name: the catalog
  // entry is inlined first so that `model.experts` can be swept on `model: mixtral-8x7b`.
  bool model_paths = false;
  for (const auto& c : sw.columns) model_paths = model_paths || c.rfind("model.", 0) == 0;
  for (const auto& [p, key] : ps.set_paths) model_paths = model_paths || p.rfind("model.", 0) == 0;
  for (const auto& o : opts.overrides) model_paths = model_paths || o.rfind("model.", 0) == 0;

  // Builds one point's document: base, model inlining, set:, --set, then the axis values.
  std::string catalog_file;
  bool catalog_checked = false;
  const auto build = [&](const std::vector<std::size_t>& combo) {
    const config::Document sweep_doc = config::Document::load_file(file);
    config::Diagnostics scratch;  // reads of an already-checked sweep file report nothing
    const Node sroot = sweep_doc.root(scratch);
    config::Document doc =
        ps.base_file.empty() ? config::Document::load_string("", file) : config::Document::load_file(ps.base_file);
    if (ps.base_file.empty())
      for (auto& [key, node] : sroot.child("scenario").entries()) doc.set(key, node);
    if (model_paths) {
      config::Diagnostics d;
      const Node m = doc.root(d).child("model");
      if (m.is_scalar()) {
        if (!catalog_checked) {
          catalog_file = model_catalog_file(m.text());
          catalog_checked = true;
        }
        if (!catalog_file.empty()) {
          const config::Document cat = config::Document::load_file(catalog_file);
          doc.set("model", cat.root(d));
        }
      }
    }
    for (const auto& [path, key] : ps.set_paths) {
      const Node v = sroot.child("set").child(key);
      doc.set(path, v, v.location());
    }
    for (const auto& o : opts.overrides) doc.apply_override(o);
    for (std::size_t a = 0, c = 0; a < sw.axes.size(); ++a)
      for (std::size_t k = 0; k < sw.axes[a].paths.size(); ++k, ++c)
        doc.set(sw.axes[a].paths[k], axis_value(sroot, ps.sources[a], sw.axes[a], k, combo[a]), ps.column_locs[c]);
    return doc;
  };

  // Resource bounds from a sample (first, middle, last point) before parsing them all: the runs'
  // estimate, and the time parsing every point will take (measured on the sample).
  if (opts.limits && combos.size() > 3) {
    engine::ResourceEstimate one;
    double cpu = 0;
    int sampled = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t k : {std::size_t{0}, combos.size() / 2, combos.size() - 1}) {
      try {
        const engine::ResourceEstimate e = engine::estimate_resources(engine::parse_scenario(build(combos[k])));
        one.memory_bytes = std::max(one.memory_bytes, e.memory_bytes);
        cpu += e.cpu_s;
        ++sampled;
      } catch (const config::ConfigError&) {  // reported with every point below
      }
    }
    const double parse_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 3 *
                           static_cast<double>(combos.size());
    if (sampled > 0) {
      const double runs = static_cast<double>(combos.size()) * sw.repeats;
      if (opts.on_estimate)
        opts.on_estimate(
            fmt::format("sweep {}: {} points, {} runs; estimated from {} sampled points: {:.3g} s of CPU "
                        "to run (on {} thread(s): {:.3g} s), {:.3g} s to check every point first",
                        sw.name, combos.size(), static_cast<std::uint64_t>(runs), sampled, cpu / sampled * runs,
                        std::max(1, opts.jobs), cpu / sampled * runs / std::max(1, opts.jobs), parse_s));
      check_sweep_limits(cpu / sampled * runs, one.memory_bytes, combos.size(), runs, opts, ps.axes_loc,
                         fmt::format("(from {} sampled points)", sampled));
    }
    const double run_s =
        sampled > 0 ? cpu / sampled * static_cast<double>(combos.size()) * sw.repeats / std::max(1, opts.jobs) : 0;
    if (parse_s + run_s > opts.limits->max_seconds)
      throw config::ConfigError({Diagnostic{
          ps.axes_loc, "axes",
          fmt::format("checking the sweep's {} points before running would take an estimated {:.0f} s (measured on 3 "
                      "of them) and running them {:.0f} s, more than --max-time {:.0f} s together (refused before "
                      "running; raise the limit or sweep fewer points)",
                      combos.size(), parse_s, run_s, opts.limits->max_seconds)}});
  }

  // Parse every point; collect distinct problems with the first point that showed each.
  std::vector<Diagnostic> problems;
  std::set<std::string> seen;
  std::size_t more = 0;
  std::string canonical = "moesim-sweep-v1\n";
  std::vector<std::uint64_t> point_hash;
  for (const auto& combo : combos) {
    SweepPoint pt;
    pt.value_index = combo;
    for (std::size_t a = 0; a < sw.axes.size(); ++a)
      for (const auto& l : sw.axes[a].labels[combo[a]]) pt.labels.push_back(l);
    try {
      const config::Document doc = build(combo);
      pt.scenario = engine::parse_scenario(doc);
      point_hash.push_back(sim::fnv1a64(doc.dump()));
    } catch (const config::ConfigError& e) {
      for (const auto& d : e.diagnostics()) {
        if (!seen.insert(d.str()).second) continue;
        if (problems.size() >= kMaxErrors) {
          ++more;
          continue;
        }
        problems.push_back(
            Diagnostic{d.loc, d.key, fmt::format("{} (sweep point {})", d.message, point_description(sw, pt.labels))});
      }
      point_hash.push_back(0);
    }
    sw.points.push_back(std::move(pt));
  }
  if (!problems.empty()) {
    if (more > 0)
      problems.push_back(Diagnostic{config::Location{file, 0, 0}, "", fmt::format("... and {} more problem(s)", more)});
    throw config::ConfigError(problems);
  }

  for (const auto& p : sw.points) {
    engine::ResourceEstimate e = engine::estimate_resources(p.scenario);
    e.compute_ops *= sw.repeats;
    e.flows *= sw.repeats;
    e.events *= sw.repeats;
    e.cpu_s *= sw.repeats;
    sw.estimate += e;
  }
  if (opts.limits)
    check_sweep_limits(sw.estimate.cpu_s, sw.estimate.memory_bytes, sw.points.size(),
                       static_cast<double>(sw.points.size()) * sw.repeats, opts, ps.axes_loc, "");

  sw.base_seed = ps.seed ? *ps.seed : sw.points.front().scenario.seed;
  std::vector<engine::WorkloadMode> modes;
  for (const auto& p : sw.points) modes.push_back(p.scenario.workload.mode);
  sw.metrics = metric_columns(modes);

  // Runs and the content hash: everything that decides the CSV bytes (the header, every run's
  // index, seed and fully expanded scenario), and nothing else (comments, key order of the
  // sweep file, the executor).
  canonical += sw.header() + "\n";
  for (std::size_t p = 0; p < sw.points.size(); ++p)
    for (int r = 0; r < sw.repeats; ++r) {
      const std::size_t i = sw.runs.size();
      SweepRun run{p, r, run_seed(sw.base_seed, sw.seed_mode, i, r)};
      fmt::format_to(std::back_inserter(canonical), "{},{},{:016x}\n", i, run.seed, point_hash[p]);
      sw.runs.push_back(run);
    }
  sw.hash = sim::fnv1a64(canonical);
  return sw;
}

std::string run_row(const Sweep& sw, std::size_t run_index) {
  const SweepRun& run = sw.runs.at(run_index);
  const SweepPoint& point = sw.points.at(run.point);
  engine::Scenario s = point.scenario;
  s.seed = run.seed;
  std::string error;
  nlohmann::ordered_json report;
  try {
    report = engine::run_scenario(s).report;
  } catch (const std::exception& e) {
    error = one_line(e.what());
    if (error.empty()) error = "unknown error";
  } catch (...) {
    error = "unknown error";
  }
  std::string row = fmt::format("{},{},{}", run_index, run.seed, error.empty() ? "ok" : "error");
  if (sw.repeats > 1) fmt::format_to(std::back_inserter(row), ",{}", run.repeat);
  const auto add = [&row](std::string_view cell) {
    row += ',';
    row += csv_field(cell);
  };
  for (const auto& l : point.labels) add(l);
  if (error.empty()) {
    for (const auto& c : metric_cells(report, sw.metrics)) add(c);
  } else {
    row.append(sw.metrics.size(), ',');
  }
  add(error);
  return row;
}

}  // namespace moesim::explore
