#include "explore/plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "config/input_file.hpp"
#include "engine/memory_model.hpp"
#include "engine/run.hpp"
#include "engine/simulate.hpp"
#include "engine/step_builder.hpp"
#include "explore/csv.hpp"
#include "explore/pool.hpp"
#include "hardware/gpu_catalog.hpp"
#include "sim/output_file.hpp"

namespace moesim::explore {

using config::Node;
using config::Range;

const char* to_string(Objective o) {
  switch (o) {
    case Objective::kThroughputPerGpu:
      return "throughput_per_gpu";
    case Objective::kCostPerMtok:
      return "cost_per_mtok";
    case Objective::kStepTime:
      return "step_time";
  }
  return "?";
}

const char* to_string(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kViolatesTarget:
      return "violates_target";
    case Status::kFailed:
      return "failed";
    case Status::kInvalid:
      return "invalid";
    case Status::kPrunedLimit:
      return "pruned_limit";
    case Status::kPrunedMemory:
      return "pruned_memory";
    case Status::kPrunedDominated:
      return "pruned_dominated";
  }
  return "?";
}

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

const hw::GpuCatalog& gpu_catalog() {
  static const hw::GpuCatalog c = hw::load_default_gpu_catalog();
  return c;
}

/// A list of integers >= lo; an empty list is an error (an empty axis empties the search).
std::vector<int> read_int_list(const Node& parent, const char* key, int lo) {
  std::vector<int> out;
  const Node n = parent.child(key);
  if (!n.defined()) return out;
  if (!n.is_sequence()) {
    n.error("expected a list, e.g. [1, 2, 4]");
    return out;
  }
  const auto items = n.items();
  if (items.empty()) n.error("empty list: the candidate set would be empty (leave the key out for its default)");
  for (const Node& i : items) out.push_back(static_cast<int>(i.as_int(Range::between(lo, 1 << 20))));
  return out;
}

/// The base scenario document with the plan's `set:` overrides applied.
config::Document load_base(const PlanSpec& p) {
  config::Document d = config::Document::load_file(p.base_file);
  for (const auto& s : p.base_sets) d.apply_override(s);
  return d;
}

PlanSpec parse_plan(config::Document& doc) {
  config::Diagnostics diags;
  const Node root = doc.root(diags);
  PlanSpec p;
  p.file = doc.file();
  if (!root.is_map()) {
    root.error("a plan must be a mapping with keys name, base, gpus, limits, search, objective");
    diags.throw_if_any();
  }
  p.name = root.req_string("name");
  const Node base = root.child("base");
  if (!base.defined()) {
    root.error_at("base", "required key is missing (the scenario file the candidates are built from)");
  } else {
    const std::string rel = base.as_string();
    std::filesystem::path bp(rel);
    if (bp.is_relative() && !p.file.empty()) bp = std::filesystem::path(p.file).parent_path() / bp;
    p.base_file = bp.lexically_normal().string();
    if (!rel.empty() && !std::filesystem::exists(p.base_file))
      base.error(fmt::format("file not found: {} (paths are relative to the plan file)", p.base_file));
    else if (const std::string why = config::input_file_problem(p.base_file, config::kMaxYamlBytes);
             !rel.empty() && !why.empty())
      base.error(fmt::format("{}: {}", p.base_file, why));
  }
  const Node set = root.child("set");
  std::map<std::string, config::Location> set_locs;  // "--set a=b" -> where the plan wrote it
  if (set.defined()) {
    if (!set.is_sequence()) set.error("expected a list of \"key.path=value\" strings (the --set syntax)");
    for (const Node& i : set.is_sequence() ? set.items() : std::vector<Node>{}) {
      const std::string a = i.as_string();
      if (a.find('=') == std::string::npos)
        i.error(fmt::format("'{}' is not key.path=value", a));
      else
        p.base_sets.push_back(a), set_locs.emplace("--set " + a, i.location());
    }
  }

  // GPU candidates.
  const Node gpus = root.child("gpus");
  if (!gpus.defined()) {
    root.error_at("gpus", "required key is missing (a list of {gpu: NAME, price_per_hour: X})");
  } else if (!gpus.is_sequence()) {
    gpus.error("expected a list of {gpu: NAME, price_per_hour: X}");
  } else {
    const auto items = gpus.items();
    if (items.empty()) gpus.error("empty list: name at least one GPU candidate");
    for (const Node& g : items) {
      GpuOption o;
      if (!g.is_map()) {
        g.error("expected {gpu: NAME, price_per_hour: X}");
        continue;
      }
      o.gpu = g.req_string("gpu");
      o.price_per_hour = g.req_double("price_per_hour", Range::positive());
      g.finish();
      if (!o.gpu.empty() && !gpu_catalog().find(o.gpu)) {
        const auto names = gpu_catalog().names();
        std::string msg = fmt::format("unknown GPU '{}'", o.gpu);
        if (auto dym = config::did_you_mean(o.gpu, names)) msg += fmt::format(" (did you mean '{}'?)", *dym);
        msg += fmt::format("; known GPUs: {}", fmt::join(names, ", "));
        g.child("gpu").error(msg);
      }
      p.gpus.push_back(o);
    }
  }

  const Node limits = root.child("limits");
  if (limits.defined()) {
    p.max_gpus = static_cast<int>(limits.opt_int("max_gpus", 0, Range::between(1, 1 << 20)));
    p.max_nodes = static_cast<int>(limits.opt_int("max_nodes", 0, Range::between(1, 1 << 20)));
    p.max_cost_per_hour = limits.opt_double("max_cost_per_hour", 0, Range::positive());
    limits.finish();
  }

  const Node search = root.child("search");
  Node batch_node, mb_node, rc_node, zs_node;
  if (search.defined()) {
    if (!search.is_map()) search.error("expected a map of axes (gpus, tp, ep, pp, micro_batches, ...)");
    p.gpu_counts = read_int_list(search, "gpus", 1);
    p.tp = read_int_list(search, "tp", 1);
    p.ep = read_int_list(search, "ep", 1);
    p.pp = read_int_list(search, "pp", 1);
    p.micro_batches = read_int_list(search, "micro_batches", 1);
    mb_node = search.child("micro_batches");
    const Node cf = search.child("capacity_factor");
    if (cf.defined()) {
      if (!cf.is_sequence()) cf.error("expected a list, e.g. [1.0, 1.25, none]");
      const auto items = cf.is_sequence() ? cf.items() : std::vector<Node>{};
      if (cf.is_sequence() && items.empty()) cf.error("empty list: the candidate set would be empty");
      for (const Node& i : items) {
        const std::string v = i.as_string();
        if (v == "none") {
          p.capacity_factors.push_back(v);
        } else {
          const double x = i.as_double(Range::positive());
          p.capacity_factors.push_back(fmt::format("{}", x));
        }
      }
    }
    rc_node = search.child("recompute");
    if (rc_node.defined()) {
      if (!rc_node.is_sequence()) rc_node.error("expected a list, e.g. [false, true]");
      const auto items = rc_node.is_sequence() ? rc_node.items() : std::vector<Node>{};
      if (rc_node.is_sequence() && items.empty()) rc_node.error("empty list: the candidate set would be empty");
      for (const Node& i : items) p.recompute.push_back(i.as_bool() ? 1 : 0);
    }
    zs_node = search.child("zero_stage");
    if (zs_node.defined()) {
      if (!zs_node.is_sequence()) zs_node.error("expected a list, e.g. [1, 3]");
      const auto items = zs_node.is_sequence() ? zs_node.items() : std::vector<Node>{};
      if (zs_node.is_sequence() && items.empty()) zs_node.error("empty list: the candidate set would be empty");
      for (const Node& i : items) p.zero_stage.push_back(static_cast<int>(i.as_int(Range::between(0, 3))));
    }
    batch_node = search.child("batch");
    if (batch_node.defined()) {
      if (!batch_node.is_sequence()) batch_node.error("expected a list, e.g. [64, 128, 256]");
      const auto items = batch_node.is_sequence() ? batch_node.items() : std::vector<Node>{};
      if (batch_node.is_sequence() && items.empty()) batch_node.error("empty list: the candidate set would be empty");
      for (const Node& i : items) p.batch.push_back(i.as_int(Range::between(1, 1e12)));
    }
    if (search.is_map()) search.finish();
  }

  const Node prefill = root.child("prefill");
  if (prefill.defined()) {
    p.prompt_len = prefill.req_int("prompt_len", Range::between(1, 1e12));
    prefill.finish();
  }
  const Node targets = root.child("targets");
  if (targets.defined()) {
    if (targets.has("tpot")) p.tpot_us = targets.req_time("tpot", Range::positive()).to_us();
    if (targets.has("ttft")) p.ttft_us = targets.req_time("ttft", Range::positive()).to_us();
    targets.finish();
  }
  const std::string obj =
      root.opt_choice("objective", {"throughput_per_gpu", "cost_per_mtok", "step_time"}, "cost_per_mtok");
  p.objective = obj == "throughput_per_gpu" ? Objective::kThroughputPerGpu
                : obj == "step_time"        ? Objective::kStepTime
                                            : Objective::kCostPerMtok;
  p.top = static_cast<int>(root.opt_int("top", 5, Range::between(0, 1000)));
  root.finish();

  if (p.max_gpus == 0 && p.gpu_counts.empty())
    root.error_at("limits", "set limits.max_gpus or list search.gpus (the GPU counts to try)");
  if (p.ttft_us && p.prompt_len == 0)
    targets.error_at("ttft", "a TTFT target needs prefill.prompt_len (TTFT = prefill time of the whole batch)");
  p.search_loc = search.defined() ? search.location() : root.location();

  // The base scenario: validated as `moesim run` would (its errors name the base file), and
  // reported together with the plan's own errors.
  if (p.base_file.empty() || !config::input_file_problem(p.base_file, config::kMaxYamlBytes).empty())
    diags.throw_if_any();
  std::optional<engine::Scenario> b;
  try {
    b = engine::parse_scenario(load_base(p));
  } catch (const config::ConfigError& e) {
    for (const auto& d : e.diagnostics()) {
      const auto at = set_locs.find(d.loc.file);  // a value from the plan's `set:` list
      diags.error(at != set_locs.end() ? at->second : d.loc, d.key, d.message);
    }
    diags.throw_if_any();
  }
  const auto mode = b->workload.mode;
  if (mode != engine::WorkloadMode::kTrain && mode != engine::WorkloadMode::kDecode)
    base.error(fmt::format("the base scenario's workload mode is {}; the planner plans train and decode scenarios",
                           engine::to_string(mode)));
  p.mode = mode;
  p.gpus_per_node = b->cluster.gpus_per_node;
  p.experts = b->model.experts;
  const bool decode = mode == engine::WorkloadMode::kDecode;
  if (decode) {
    if (!p.micro_batches.empty()) mb_node.error("applies to training plans only (the base scenario is decode)");
    if (!p.recompute.empty()) rc_node.error("applies to training plans only (the base scenario is decode)");
    if (!p.zero_stage.empty()) zs_node.error("applies to training plans only (the base scenario is decode)");
  } else {
    if (!p.batch.empty())
      batch_node.error("applies to decode plans only; a training plan takes its batch from the base");
    if (prefill.defined()) root.error_at("prefill", "applies to decode plans only (TTFT)");
    if (p.tpot_us) targets.error_at("tpot", "applies to decode plans only");
  }
  diags.throw_if_any();
  return p;
}

std::vector<int> default_gpu_counts(const PlanSpec& p) {
  std::vector<int> out;
  const int g = p.gpus_per_node;
  if (p.max_gpus < g) return {p.max_gpus};
  for (int n = 1; n * g <= p.max_gpus && (p.max_nodes == 0 || n <= p.max_nodes); ++n) out.push_back(n * g);
  return out;
}

std::vector<int> powers_of_two_upto(int hi) {
  std::vector<int> out;
  for (int v = 1; v <= hi; v *= 2) out.push_back(v);
  return out;
}

struct Prepared {
  std::vector<std::optional<engine::Scenario>> scen, prefill;
};

std::string candidate_name(const PlanSpec& p, const Candidate& c) {
  std::string n = fmt::format("{}-{}-{}g-dp{}tp{}ep{}pp{}", p.name, p.gpus[static_cast<std::size_t>(c.gpu_option)].gpu,
                              c.gpus, c.dp, c.tp, c.ep, c.pp);
  if (p.mode == engine::WorkloadMode::kTrain) {
    n += fmt::format("-mb{}-cf{}", c.micro_batches, c.capacity_factor);
    if (c.recompute == 1) n += "-recompute";
    if (c.zero_stage >= 0) n += fmt::format("-zero{}", c.zero_stage);
  } else {
    n += fmt::format("-cf{}-b{}", c.capacity_factor, c.batch);
  }
  return n;
}

std::string cf_string(const models::RoutingSpec& r) {
  return r.capacity_factor ? fmt::format("{}", *r.capacity_factor) : std::string("none");
}

/// The candidate's scenario document: the base plus the candidate's choices as overrides.
config::Document candidate_doc(const PlanSpec& p, const config::Document& base, const Candidate& c,
                               const engine::Scenario& b) {
  config::Document d = base.clone();
  d.set("name", candidate_name(p, c));
  d.set("cluster.gpu", p.gpus[static_cast<std::size_t>(c.gpu_option)].gpu);
  d.set("cluster.nodes", fmt::format("{}", c.nodes));
  d.set("cluster.gpus_per_node", fmt::format("{}", c.gpus_per_node));
  d.set("parallel",
        fmt::format("{{dp: {}, tp: {}, ep: {}, pp: {}, micro_batches: {}}}", c.dp, c.tp, c.ep, c.pp, c.micro_batches));
  if (c.capacity_factor != cf_string(b.routing)) d.set("routing.capacity_factor", c.capacity_factor);
  if (p.mode == engine::WorkloadMode::kTrain) {
    if ((c.recompute == 1) != b.workload.recompute) d.set("workload.recompute", c.recompute == 1 ? "true" : "false");
    if (c.zero_stage >= 0 && c.zero_stage != b.workload.optimizer.zero_stage)
      d.set("workload.optimizer.zero_stage", fmt::format("{}", c.zero_stage));
  } else {
    d.set("workload.batch", fmt::format("{}", c.batch));
  }
  if (!b.execution.profile.empty())  // written scenarios live elsewhere: make the path absolute
    d.set("execution.profile", std::filesystem::absolute(b.execution.profile).lexically_normal().string());
  return d;
}

engine::MemoryEstimate estimate(const engine::Scenario& s) {
  // The estimate simulate_step makes for this scenario, without building the step.
  return engine::estimate_memory(s, engine::memory_options(engine::simulate_options(s).build));
}

/// Parses one document; on failure marks the candidate invalid and returns nullopt.
std::optional<engine::Scenario> parse_candidate(const config::Document& d, Candidate& c, const char* what) {
  try {
    return engine::parse_scenario(d);
  } catch (const config::ConfigError& e) {
    c.status = Status::kInvalid;
    const auto& dg = e.diagnostics();
    c.rule = dg.empty() ? std::string("scenario") : dg.front().key;
    c.reason = fmt::format("{}{}", what, dg.empty() ? std::string(e.what()) : dg.front().message);
    return std::nullopt;
  }
}

void set_metrics(const PlanSpec& p, Candidate& c) {
  const double price = p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour;
  c.tokens_per_s_per_gpu = c.tokens_per_s / c.gpus;
  c.cost_per_mtok = c.tokens_per_s > 0 ? price * c.gpus / (c.tokens_per_s * 3600.0) * 1e6 : 0;
}

/// CSV cells: the same quoting and shortest round-trip numbers as a sweep's results.csv.
std::string num(double v) { return format_number(v); }

}  // namespace

PlanSpec load_plan(const std::string& path, const std::vector<std::string>& overrides) {
  config::Document doc = config::Document::load_file(path);
  for (const auto& o : overrides) doc.apply_override(o);
  return parse_plan(doc);
}

PlanSpec load_plan_string(const std::string& text, const std::string& name) {
  config::Document doc = config::Document::load_string(text, name);
  return parse_plan(doc);
}

PlanResult prepare_plan(const PlanSpec& p) {
  const config::Document base = load_base(p);
  const engine::Scenario b = engine::parse_scenario(base);
  const bool train = p.mode == engine::WorkloadMode::kTrain;
  const int g = p.gpus_per_node;

  // 1. Enumerate in a fixed nested order: the candidate index.
  PlanResult r;
  const std::vector<int> counts = p.gpu_counts.empty() ? default_gpu_counts(p) : p.gpu_counts;
  const std::vector<int> pps = p.pp.empty() ? std::vector<int>{1} : p.pp;
  const std::vector<std::string> cfs =
      p.capacity_factors.empty() ? std::vector<std::string>{cf_string(b.routing)} : p.capacity_factors;
  for (int o = 0; o < static_cast<int>(p.gpus.size()); ++o)
    for (int n : counts) {
      const std::vector<int> tps = p.tp.empty() ? powers_of_two_upto(std::min(n, g)) : p.tp;
      for (int pp : pps)
        for (int tp : tps) {
          if (n % (tp * pp) != 0) continue;  // not a split of n GPUs
          const int dp = n / (tp * pp);
          std::vector<int> eps = p.ep;
          if (eps.empty())
            for (int e : powers_of_two_upto(std::min(dp * tp, std::max(1, p.experts))))
              if ((dp * tp) % e == 0) eps.push_back(e);
          const std::vector<int> mbs = !train                    ? std::vector<int>{pp}
                                       : p.micro_batches.empty() ? std::vector<int>{b.parallel.micro_batches}
                                                                 : p.micro_batches;
          const std::vector<int> rcs = !train                ? std::vector<int>{-1}
                                       : p.recompute.empty() ? std::vector<int>{b.workload.recompute ? 1 : 0}
                                                             : p.recompute;
          const std::vector<int> zss = !train || p.zero_stage.empty() ? std::vector<int>{-1} : p.zero_stage;
          const std::vector<std::int64_t> batches =
              train ? std::vector<std::int64_t>{0}
                    : (p.batch.empty() ? std::vector<std::int64_t>{b.workload.batch} : p.batch);
          for (int ep : eps)
            for (int mb : mbs)
              for (const auto& cf : cfs)
                for (int rc : rcs)
                  for (int zs : zss)
                    for (std::int64_t bt : batches) {
                      Candidate c;
                      c.index = r.candidates.size();
                      c.gpu_option = o;
                      c.gpus = n;
                      c.gpus_per_node = std::min(n, g);
                      c.nodes = n / c.gpus_per_node;
                      c.dp = dp, c.tp = tp, c.ep = ep, c.pp = pp, c.micro_batches = mb;
                      c.capacity_factor = cf;
                      c.recompute = rc;
                      c.zero_stage = zs;
                      c.batch = bt;
                      r.candidates.push_back(c);
                    }
        }
    }
  r.scenario_yaml.assign(r.candidates.size(), {});
  r.prefill_yaml.assign(r.candidates.size(), {});

  // 2. Limits, validation (as `moesim run`), memory.
  for (Candidate& c : r.candidates) {
    const double price = p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour;
    if (p.max_gpus > 0 && c.gpus > p.max_gpus) {
      c.status = Status::kPrunedLimit, c.rule = "limit";
      c.reason = fmt::format("{} GPUs > limits.max_gpus {}", c.gpus, p.max_gpus);
      continue;
    }
    if (p.max_nodes > 0 && c.nodes > p.max_nodes) {
      c.status = Status::kPrunedLimit, c.rule = "limit";
      c.reason = fmt::format("{} nodes > limits.max_nodes {}", c.nodes, p.max_nodes);
      continue;
    }
    if (p.max_cost_per_hour > 0 && price * c.gpus > p.max_cost_per_hour) {
      c.status = Status::kPrunedLimit, c.rule = "limit";
      c.reason = fmt::format("{} per hour > limits.max_cost_per_hour {}", price * c.gpus, p.max_cost_per_hour);
      continue;
    }
    if (c.gpus > g && c.gpus % g != 0) {
      c.status = Status::kInvalid, c.rule = "search.gpus";
      c.reason = fmt::format("{} GPUs are not a whole number of {}-GPU nodes", c.gpus, g);
      continue;
    }
    const config::Document d = candidate_doc(p, base, c, b);
    const auto s = parse_candidate(d, c, "");
    if (!s) continue;
    r.scenario_yaml[c.index] = d.dump();
    try {
      const engine::MemoryEstimate m = estimate(*s);
      c.peak_bytes = m.peak_bytes;
      c.capacity_bytes = m.capacity_bytes;
      c.fits = m.fits;
      if (!train && p.prompt_len > 0) {
        config::Document pd = d.clone();
        pd.set("name", candidate_name(p, c) + "-prefill");
        pd.set("workload", fmt::format("{{mode: prefill, batch: {}, prompt_len: {}}}", c.batch, p.prompt_len));
        const auto ps = parse_candidate(pd, c, "prefill: ");
        if (!ps) continue;
        r.prefill_yaml[c.index] = pd.dump();
        const engine::MemoryEstimate pm = estimate(*ps);
        c.peak_bytes = std::max(c.peak_bytes, pm.peak_bytes);
        c.fits = c.fits && pm.fits;
      }
    } catch (const std::invalid_argument& e) {
      c.status = Status::kInvalid, c.rule = "workload", c.reason = e.what();
      continue;
    }
    if (!c.fits) {
      c.status = Status::kPrunedMemory, c.rule = "memory";
      c.reason = fmt::format("estimated peak {:.2f} GiB > {:.2f} GiB HBM per GPU", c.peak_bytes / kGiB,
                             c.capacity_bytes / kGiB);
    }
  }

  // 3. Dominance. Configuration key: everything but the GPU option's price.
  using Key = std::tuple<std::string, int, int, int, int, int, int, std::string, int, int, std::int64_t>;
  const auto key = [&](const Candidate& c, int recompute) {
    return Key{p.gpus[static_cast<std::size_t>(c.gpu_option)].gpu,
               c.gpus,
               c.dp,
               c.tp,
               c.ep,
               c.pp,
               c.micro_batches,
               c.capacity_factor,
               recompute,
               c.zero_stage,
               c.batch};
  };
  // recompute: the same candidate without recomputation fits, so recomputation only adds work.
  std::map<std::pair<int, Key>, std::size_t> no_recompute;  // same GPU option: same price
  for (const Candidate& c : r.candidates)
    if (c.recompute == 0 && c.status == Status::kOk && c.fits)
      no_recompute.emplace(std::pair{c.gpu_option, key(c, 0)}, c.index);
  for (Candidate& c : r.candidates) {
    if (c.status != Status::kOk || c.recompute != 1) continue;
    const auto found = no_recompute.find(std::pair{c.gpu_option, key(c, 0)});
    if (found == no_recompute.end()) continue;
    const std::size_t twin = found->second;
    c.status = Status::kPrunedDominated, c.rule = "recompute", c.dominator = twin;
    c.reason = fmt::format(
        "dominated by #{}: the same configuration fits without activation recomputation, which "
        "only adds forward work",
        twin);
  }
  // price: the same GPU and configuration offered more cheaply (identical simulation).
  std::map<Key, std::size_t> cheapest;
  for (const Candidate& c : r.candidates) {
    if (c.status != Status::kOk) continue;
    const Key k = key(c, c.recompute);
    auto it = cheapest.find(k);
    const double price = p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour;
    if (it == cheapest.end() ||
        price < p.gpus[static_cast<std::size_t>(r.candidates[it->second].gpu_option)].price_per_hour)
      cheapest[k] = c.index;
  }
  for (Candidate& c : r.candidates) {
    if (c.status != Status::kOk) continue;
    const std::size_t best = cheapest.at(key(c, c.recompute));
    if (best == c.index) continue;
    const double mine = p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour;
    const double theirs = p.gpus[static_cast<std::size_t>(r.candidates[best].gpu_option)].price_per_hour;
    c.status = Status::kPrunedDominated, c.rule = "price", c.dominator = best;
    c.reason = mine > theirs ? fmt::format(
                                   "dominated by #{}: the same GPU and configuration at {} instead of {} per "
                                   "GPU-hour (identical simulation)",
                                   best, theirs, mine)
                             : fmt::format("duplicate of #{}: the same GPU, configuration and price", best);
  }
  return r;
}

void check_not_empty(const PlanSpec& p, const PlanResult& r) {
  std::map<std::string, std::size_t> by;
  for (const Candidate& c : r.candidates) {
    if (c.status == Status::kOk) return;
    ++by[fmt::format("{} ({})", to_string(c.status), c.rule)];
  }
  std::vector<std::string> parts;
  for (const auto& [k, v] : by) parts.push_back(fmt::format("{} {}", v, k));
  throw config::ConfigError(
      {config::Diagnostic{p.search_loc, "search",
                          fmt::format("no candidate is left to simulate: {} enumerated{}{}", r.candidates.size(),
                                      parts.empty() ? "" : ": ", fmt::join(parts, ", "))}});
}

void simulate_plan(const PlanSpec& p, PlanResult& r, int threads,
                   const std::function<void(std::size_t, std::size_t)>& progress) {
  std::vector<std::size_t> todo;
  for (const Candidate& c : r.candidates)
    if (c.status == Status::kOk) todo.push_back(c.index);
  const std::string& base_name = p.base_file;
  struct Out {
    std::string error;
    double step_us = 0, ttft_us = 0, tps = 0, drop = 0, mfu = 0;
  };
  const auto sim_one = [&](const std::string& yaml) {
    // Re-parse from the candidate's own document text: each job owns everything it touches.
    const config::Document d = config::Document::load_string(yaml, base_name);
    return engine::run_scenario(engine::parse_scenario(d)).report;
  };
  const std::function<Out(std::size_t)> job = [&](std::size_t i) {
    Out o;
    const std::size_t ci = todo[i];
    try {
      const auto rep = sim_one(r.scenario_yaml[ci]);
      o.step_us = rep.at("step_time_us").get<double>();
      o.tps = rep.at("tokens_per_s").get<double>();
      o.drop = rep.at("routing").at("drop_fraction").get<double>();
      o.mfu = rep.at("mfu").get<double>();
      if (!r.prefill_yaml[ci].empty()) o.ttft_us = sim_one(r.prefill_yaml[ci]).at("step_time_us").get<double>();
    } catch (const std::exception& e) {
      o.error = e.what();
    }
    return o;
  };
  const std::function<void(std::size_t, Out &&)> done = [&](std::size_t i, Out&& o) {
    Candidate& c = r.candidates[todo[i]];
    if (!o.error.empty()) {
      c.status = Status::kFailed, c.rule = "simulation", c.reason = o.error;
    } else {
      c.step_time_us = o.step_us;
      c.ttft_us = o.ttft_us;
      c.tokens_per_s = o.tps;
      c.drop_fraction = o.drop;
      c.mfu = o.mfu;
      set_metrics(p, c);
      if (p.tpot_us && c.step_time_us > *p.tpot_us) {
        c.status = Status::kViolatesTarget, c.rule = "tpot";
        c.reason = fmt::format("TPOT {:.3f} ms > target {:.3f} ms", c.step_time_us / 1e3, *p.tpot_us / 1e3);
      } else if (p.ttft_us && c.ttft_us > *p.ttft_us) {
        c.status = Status::kViolatesTarget, c.rule = "ttft";
        c.reason = fmt::format("TTFT {:.3f} ms > target {:.3f} ms", c.ttft_us / 1e3, *p.ttft_us / 1e3);
      }
    }
    if (progress) progress(i + 1, todo.size());
  };
  run_ordered<Out>(todo.size(), threads, job, done);
  rank_candidates(p, r);
}

void rank_candidates(const PlanSpec& p, PlanResult& r) {
  std::vector<std::size_t> ok;
  for (Candidate& c : r.candidates) {
    c.rank = 0;
    c.pareto = false;
    if (c.status == Status::kOk) ok.push_back(c.index);
  }
  const auto value = [&](const Candidate& c) {
    switch (p.objective) {
      case Objective::kThroughputPerGpu:
        return -c.tokens_per_s_per_gpu;
      case Objective::kCostPerMtok:
        return c.cost_per_mtok;
      case Objective::kStepTime:
        return c.step_time_us;
    }
    return 0.0;
  };
  r.ranked = ok;
  std::stable_sort(r.ranked.begin(), r.ranked.end(), [&](std::size_t a, std::size_t b) {
    const double va = value(r.candidates[a]), vb = value(r.candidates[b]);
    return va != vb ? va < vb : a < b;
  });
  for (std::size_t i = 0; i < r.ranked.size(); ++i) r.candidates[r.ranked[i]].rank = static_cast<int>(i + 1);
  // Pareto front of (cost per Mtok, step time), both minimised: no other point is at least as
  // good in both and better in one.
  r.pareto.clear();
  for (std::size_t a : ok) {
    const Candidate& ca = r.candidates[a];
    bool dominated = false;
    for (std::size_t b : ok) {
      const Candidate& cb = r.candidates[b];
      if (cb.cost_per_mtok <= ca.cost_per_mtok && cb.step_time_us <= ca.step_time_us &&
          (cb.cost_per_mtok < ca.cost_per_mtok || cb.step_time_us < ca.step_time_us)) {
        dominated = true;
        break;
      }
    }
    if (!dominated) {
      r.candidates[a].pareto = true;
      r.pareto.push_back(a);
    }
  }
  std::stable_sort(r.pareto.begin(), r.pareto.end(), [&](std::size_t a, std::size_t b) {
    const Candidate &ca = r.candidates[a], &cb = r.candidates[b];
    return ca.step_time_us != cb.step_time_us ? ca.step_time_us < cb.step_time_us : a < b;
  });
}

namespace {

void write_rows(const PlanSpec& p, const PlanResult& r, const std::vector<std::size_t>& rows, std::ostream& os) {
  os << "index,gpu,price_per_hour,gpus,nodes,dp,tp,ep,pp,micro_batches,capacity_factor,recompute,zero_stage,batch,"
        "status,rule,"
        "dominated_by,peak_mem_GiB,fits,step_time_us,ttft_us,tokens_per_s,tokens_per_s_per_gpu,cost_per_mtok,"
        "drop_fraction,mfu,rank,pareto,reason\n";
  for (std::size_t i : rows) {
    const Candidate& c = r.candidates[i];
    const GpuOption& g = p.gpus[static_cast<std::size_t>(c.gpu_option)];
    const bool estimated = c.capacity_bytes > 0;
    const bool simulated = c.status == Status::kOk || c.status == Status::kViolatesTarget;
    std::string line = fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},", c.index, g.gpu,
                                   num(g.price_per_hour), c.gpus, c.nodes, c.dp, c.tp, c.ep, c.pp,
                                   p.mode == engine::WorkloadMode::kTrain ? fmt::format("{}", c.micro_batches) : "",
                                   c.capacity_factor, c.recompute < 0 ? std::string() : fmt::format("{}", c.recompute),
                                   c.zero_stage < 0 ? std::string() : fmt::format("{}", c.zero_stage),
                                   c.batch > 0 ? fmt::format("{}", c.batch) : "", to_string(c.status), c.rule,
                                   c.status == Status::kPrunedDominated ? fmt::format("{}", c.dominator) : "");
    line += estimated ? fmt::format("{},{},", num(c.peak_bytes / kGiB), c.fits ? 1 : 0) : std::string(",,");
    if (simulated)
      line += fmt::format("{},{},{},{},{},{},{},", num(c.step_time_us), c.ttft_us > 0 ? num(c.ttft_us) : "",
                          num(c.tokens_per_s), num(c.tokens_per_s_per_gpu), num(c.cost_per_mtok), num(c.drop_fraction),
                          num(c.mfu));
    else
      line += ",,,,,,,";
    line +=
        fmt::format("{},{},{}\n", c.rank > 0 ? fmt::format("{}", c.rank) : "", c.pareto ? 1 : 0, csv_field(c.reason));
    os << line;
  }
}

}  // namespace

void write_plan_csv(const PlanSpec& p, const PlanResult& r, std::ostream& os) {
  std::vector<std::size_t> all(r.candidates.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  write_rows(p, r, all, os);
}

void write_pareto_csv(const PlanSpec& p, const PlanResult& r, std::ostream& os) { write_rows(p, r, r.pareto, os); }

std::string format_summary(const PlanSpec& p, const PlanResult& r, std::size_t max_rows) {
  std::string out;
  auto it = std::back_inserter(out);
  const bool train = p.mode == engine::WorkloadMode::kTrain;
  std::map<Status, std::size_t> by_status;
  std::map<std::string, std::size_t> invalid_by, dominated_by;
  for (const Candidate& c : r.candidates) {
    ++by_status[c.status];
    if (c.status == Status::kInvalid) ++invalid_by[c.rule];
    if (c.status == Status::kPrunedDominated) ++dominated_by[c.rule];
  }
  const auto cnt = [&](Status s) { return by_status.count(s) ? by_status.at(s) : std::size_t{0}; };
  const auto list = [](const std::map<std::string, std::size_t>& m) {
    std::vector<std::string> parts;
    for (const auto& [k, v] : m) parts.push_back(fmt::format("{}: {}", k, v));
    return parts.empty() ? std::string() : fmt::format(" ({})", fmt::join(parts, ", "));
  };
  const std::size_t simulated = cnt(Status::kOk) + cnt(Status::kViolatesTarget) + cnt(Status::kFailed);
  fmt::format_to(it, "plan       {} ({}), {} plan, objective {}\n", p.name, p.file, train ? "training" : "decode",
                 to_string(p.objective));
  fmt::format_to(it, "candidates {} enumerated\n", r.candidates.size());
  fmt::format_to(it, "  invalid           {}{}\n", cnt(Status::kInvalid), list(invalid_by));
  fmt::format_to(it, "  pruned (limit)    {}\n", cnt(Status::kPrunedLimit));
  fmt::format_to(it, "  pruned (memory)   {}\n", cnt(Status::kPrunedMemory));
  fmt::format_to(it, "  pruned (dominated) {}{}\n", cnt(Status::kPrunedDominated), list(dominated_by));
  fmt::format_to(it, "  simulated         {} (failed {}, missed a target {})\n", simulated, cnt(Status::kFailed),
                 cnt(Status::kViolatesTarget));
  fmt::format_to(it, "  ranked            {}, Pareto front (cost vs {}) {} points (*)\n", r.ranked.size(),
                 train ? "step time" : "TPOT", r.pareto.size());
  if (r.ranked.empty()) return out;
  const char* time_col = train ? "step_ms" : "TPOT_ms";
  const bool ttft = !train && p.prompt_len > 0;
  fmt::format_to(it, "\n{:>4} {:1} {:<14} {:>5} {:>15} {:>3} {:>5} {:>6} {:>10} {}{:>11} {:>9} {:>8} {}\n", "rank", "",
                 "gpu", "gpus", "dp/tp/ep/pp", "mb", "cf", train ? "recomp" : "batch", time_col,
                 ttft ? fmt::format("{:>10} ", "TTFT_ms") : "", "tok/s/GPU", "$/Mtok", "peak_GiB", "fits");
  const auto row = [&](const Candidate& c) {
    fmt::format_to(it, "{:>4} {:1} {:<14} {:>5} {:>15} {:>3} {:>5} {:>6} {:>10.3f} {}{:>11.1f} {:>9.4f} {:>8.2f} {}\n",
                   c.rank, c.pareto ? "*" : "", p.gpus[static_cast<std::size_t>(c.gpu_option)].gpu, c.gpus,
                   fmt::format("{}/{}/{}/{}", c.dp, c.tp, c.ep, c.pp), train ? fmt::format("{}", c.micro_batches) : "-",
                   c.capacity_factor, train ? (c.recompute == 1 ? "yes" : "no") : fmt::format("{}", c.batch),
                   c.step_time_us / 1e3, ttft ? fmt::format("{:>10.3f} ", c.ttft_us / 1e3) : "", c.tokens_per_s_per_gpu,
                   c.cost_per_mtok, c.peak_bytes / kGiB, c.fits ? "yes" : "no");
  };
  for (std::size_t i = 0; i < r.ranked.size() && i < max_rows; ++i) row(r.candidates[r.ranked[i]]);
  if (r.ranked.size() > max_rows) fmt::format_to(it, "     ... {} more in plan.csv\n", r.ranked.size() - max_rows);
  fmt::format_to(it, "\nPareto front (by {}):\n", train ? "step time" : "TPOT");
  for (std::size_t i : r.pareto) row(r.candidates[i]);
  return out;
}

std::vector<std::string> write_outputs(const PlanSpec& p, const PlanResult& r, const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  std::vector<std::string> written;
  // Each file is written whole and checked (every write, the flush and the close), then renamed
  // into place: a full disk is an error (exit 1), a kill leaves the previous version or none,
  // never a truncated plan.csv.
  const auto put = [&](const std::string& name, const std::string& content) {
    const std::string path = (fs::path(dir) / name).string();
    sim::write_file_atomic(path, content);
    written.push_back(path);
  };
  {
    std::ostringstream f;
    write_plan_csv(p, r, f);
    put("plan.csv", f.str());
  }
  {
    std::ostringstream f;
    write_pareto_csv(p, r, f);
    put("pareto.csv", f.str());
  }
  for (std::size_t i = 0; i < r.ranked.size() && i < static_cast<std::size_t>(p.top); ++i) {
    const Candidate& c = r.candidates[r.ranked[i]];
    const std::string header =
        fmt::format("# moesim plan {}: rank {} of {} by {} (candidate #{}), {} at {} per GPU-hour\n", p.name, i + 1,
                    r.ranked.size(), to_string(p.objective), c.index,
                    p.gpus[static_cast<std::size_t>(c.gpu_option)].gpu,
                    num(p.gpus[static_cast<std::size_t>(c.gpu_option)].price_per_hour)) +
        fmt::format("# simulated: {} {:.3f} ms, {:.1f} tokens/s/GPU, {:.4f} per million tokens\n",
                    p.mode == engine::WorkloadMode::kTrain ? "step" : "TPOT", c.step_time_us / 1e3,
                    c.tokens_per_s_per_gpu, c.cost_per_mtok);
    put(fmt::format("top-{:02}.yaml", i + 1), header + r.scenario_yaml[c.index]);
    if (!r.prefill_yaml[c.index].empty())
      put(fmt::format("top-{:02}-prefill.yaml", i + 1),
          header + "# the prefill run of the whole batch (TTFT)\n" + r.prefill_yaml[c.index]);
  }
  return written;
}

}  // namespace moesim::explore
