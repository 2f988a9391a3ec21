/// The `moesim` command line: run, validate, describe, --version.
///
/// Exit codes (CONVENTIONS.md): 0 ok; 1 simulation/runtime failure; 2 usage or configuration
/// error; 3 sweep finished with some failed runs. Results go to stdout or files; diagnostics
/// and progress go to stderr.

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "config/reader.hpp"
#include "engine/gpu_params.hpp"
#include "engine/scenario.hpp"
#include "engine/simulate.hpp"
#include "hardware/collectives.hpp"
#include "hardware/gpu_catalog.hpp"
#include "hardware/topology.hpp"
#include "models/cost/calibrate.hpp"
#include "models/cost/profile.hpp"
#include "models/model_spec.hpp"
#include "models/router.hpp"
#include "sim/units.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

using moesim::engine::Scenario;

void print_summary(const Scenario& s, std::FILE* out) {
  const auto& p = s.parallel;
  const auto& w = s.workload;
  fmt::print(out, "scenario   {} ({})\n", s.name, s.file);
  fmt::print(out, "seed       {}\n", s.seed);
  if (w.mode != moesim::engine::WorkloadMode::kCollective)
    fmt::print(out, "parallel   dp={} tp={} ep={} pp={} micro_batches={} (world {})\n", p.dp, p.tp, p.ep, p.pp,
               p.micro_batches, p.world());
  fmt::print(out, "workload   {}", moesim::engine::to_string(w.mode));
  if (w.tokens_per_step() > 0) fmt::print(out, ", {} tokens/step", w.tokens_per_step());
  if (w.collective)
    fmt::print(out, ", {} of {} ({})", moesim::engine::to_string(w.collective->op),
               moesim::sim::format_bytes(w.collective->bytes), w.collective->algorithm);
  fmt::print(out, "\nnetwork    {}\n", moesim::engine::to_string(s.network.model));
}

/// Routing-only run: sample the step's routing and report per-layer drop and imbalance.
void run_routing(const Scenario& s, nlohmann::ordered_json& j) {
  namespace m = moesim::models;
  m::RouteRequest req;
  req.tokens_per_group = s.tokens_per_group();
  req.groups = static_cast<int>(s.routing_groups());
  req.seed = s.seed;
  req.ep_ranks = s.parallel.ep;
  req.keep_assignments = false;
  std::optional<m::RoutingTrace> trace;
  if (s.routing.distribution == m::Distribution::kTrace)
    trace = m::load_routing_trace(s.routing.trace_file, s.model, s.routing.top_k);
  const m::StepRouting step = m::route_step(s.model, s.routing, req, trace ? &*trace : nullptr);
  std::ostringstream os;
  m::format_routing_summary(os, s.model, s.routing, step);
  std::fputs(os.str().c_str(), stdout);
  nlohmann::ordered_json r;
  r["sampling_mode"] = m::to_string(step.mode);
  r["groups"] = step.groups;
  r["tokens_per_group"] = step.tokens_per_group;
  r["drop_fraction"] = step.drop_fraction;
  r["padded_fraction"] = step.padded_fraction;
  r["max_over_mean_load"] = step.max_over_mean;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& l : step.layers) {
    const auto& st = l.stats;
    layers.push_back(
        {{"layer", l.layer},
         {"routed", st.routed},
         {"kept", st.kept},
         {"dropped", st.dropped},
         {"padded", st.padded},
         {"drop_fraction", st.drop_fraction},
         {"fully_dropped_fraction",
          st.fully_dropped_tokens < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(st.fully_dropped_fraction)},
         {"padded_fraction", st.padded_fraction},
         {"max_over_mean_load", st.max_over_mean},
         {"cv", st.cv},
         {"gini", st.gini},
         {"aux_loss", st.aux_loss},
         {"entropy_normalized", st.entropy_normalized},
         {"expert_routed", st.expert_routed}});
  }
  r["layers"] = std::move(layers);
  j["routing"] = std::move(r);
}

/// Single-collective run: the collective over every GPU of the cluster, alone on the network.
void run_collective(const Scenario& s, const moesim::hw::Topology& topo, nlohmann::ordered_json& j) {
  namespace hw = moesim::hw;
  namespace e = moesim::engine;
  const auto& c = *s.workload.collective;
  e::CollectiveRequest req;
  req.gpus = hw::all_gpus(topo);
  req.bytes = c.bytes;
  switch (c.op) {
    case e::CollectiveOp::kAllToAll: {
      // Every GPU sends c.bytes to every other GPU.
      const std::size_t n = req.gpus.size();
      req.kind = e::CollectiveKind::kAllToAllV;
      req.matrix = std::make_shared<const std::vector<double>>(n * n, c.bytes);
      break;
    }
    case e::CollectiveOp::kAllReduce:
      req.kind = e::CollectiveKind::kAllReduce;
      break;
    case e::CollectiveOp::kAllGather:
      req.kind = e::CollectiveKind::kAllGather;
      break;
    case e::CollectiveOp::kReduceScatter:
      req.kind = e::CollectiveKind::kReduceScatter;
      break;
    case e::CollectiveOp::kSendRecv:
      req.kind = e::CollectiveKind::kSendRecv;
      break;
  }
  const hw::CollectivePlan plan = e::plan_collective(
      topo, req, c.algorithm == "hierarchical" ? hw::CollectiveAlgo::kHierarchical : hw::CollectiveAlgo::kDirect,
      c.algorithm == "tree" ? hw::CollectiveAlgo::kTree : hw::CollectiveAlgo::kRing);
  hw::CollectiveOptions opts;
  opts.launch_overhead = s.cluster.gpu.kernel_launch_overhead;
  const auto model =
      s.network.model == moesim::engine::NetworkModel::kFlow ? hw::NetworkModel::kFlow : hw::NetworkModel::kAnalytical;
  const hw::CollectiveResult r = hw::run_collective(topo, plan, model, opts);
  fmt::print(
      "collective {} ({}) over {} GPUs, size {}: time {:.3f} us, algbw {:.2f} GB/s, busbw {:.2f} GB/s "
      "({} network model, launch overhead {} included)\n",
      hw::to_string(r.kind), c.algorithm, r.ranks, moesim::sim::format_bytes(r.size_bytes), r.time.to_us(),
      r.algbw / 1e9, r.busbw / 1e9, moesim::engine::to_string(s.network.model),
      moesim::sim::to_string(opts.launch_overhead));
  j["step_time_us"] = r.time.to_us();
  j["collective"] = {{"op", hw::to_string(r.kind)}, {"algorithm", c.algorithm},  {"ranks", r.ranks},
                     {"size_bytes", r.size_bytes},  {"time_us", r.time.to_us()}, {"algbw_GBps", r.algbw / 1e9},
                     {"busbw_GBps", r.busbw / 1e9}, {"phases", r.phases}};
}

/// Full step (train / prefill / decode): executor on the cluster with cost models.
void run_step(const Scenario& s, const std::string& trace, nlohmann::ordered_json& j) {
  namespace e = moesim::engine;
  e::SimulateOptions o;
  o.trace_file = trace;
  o.profile_file = s.execution.profile;
  o.build.overlap_chunks = s.execution.overlap_chunks;
  o.build.a2a_sm_count = s.execution.comm_sms;
  if (s.execution.dispatch_dtype == "fp8") o.build.dispatch_format = moesim::models::WireFormat::kFp8;
  const e::StepReport r = e::simulate_step(s, o);
  const auto& b = r.built;
  const auto& crit = r.exec.per_gpu[static_cast<std::size_t>(r.exec.critical_gpu)];
  fmt::print("step time  {:.3f} ms ({} GPUs, critical GPU {}), {:.0f} tokens/s, MFU {:.1f}%\n",
             r.exec.step_time.to_ms(), s.cluster.total_gpus(), r.exec.critical_gpu, r.tokens_per_s, 100 * r.mfu);
  fmt::print(
      "breakdown  (mean per GPU, us) compute {:.1f} | dispatch {:.1f} | combine {:.1f} | other comm {:.1f} | "
      "exposed comm {:.1f} | idle {:.1f}\n",
      r.compute_us, r.dispatch_us, r.combine_us, r.other_comm_us, r.exposed_comm_us, r.idle_us);
  fmt::print("critical   compute {:.1f} | exposed comm {:.1f} | idle {:.1f} us\n", crit.compute.to_us(),
             crit.exposed_comm.to_us(), crit.idle.to_us());
  fmt::print("routing    {} sampling, drop {:.4f}% of assignments, padded {:.4f}% of expert rows, {} MoE layers\n",
             moesim::models::to_string(s.routing.sampling), 100 * b.drop_fraction(), 100 * b.padded_fraction(),
             b.moe_layers.size());
  fmt::print("memory     peak {:.2f} GiB of {:.2f} GiB per GPU: {}\n", b.memory.peak_bytes / 1073741824.0,
             b.memory.capacity_bytes / 1073741824.0, b.memory.fits ? "fits" : "DOES NOT FIT");
  fmt::print("simulated  {} compute ops, {} collectives, {} flows, {} events\n", b.compute_ops, b.collective_ops,
             r.flows, r.exec.events);

  j["step_time_us"] = r.exec.step_time.to_us();
  j["tokens_per_s"] = r.tokens_per_s;
  j["mfu"] = r.mfu;
  j["flops"] = {{"model", b.flops.model}, {"executed", b.flops.executed}};
  j["breakdown_us"] = {{"compute", r.compute_us},
                       {"dispatch", r.dispatch_us},
                       {"combine", r.combine_us},
                       {"other_collectives", r.other_comm_us},
                       {"exposed_communication", r.exposed_comm_us},
                       {"idle", r.idle_us}};
  j["critical_gpu"] = {{"index", r.exec.critical_gpu},
                       {"compute_us", crit.compute.to_us()},
                       {"exposed_communication_us", crit.exposed_comm.to_us()},
                       {"idle_us", crit.idle.to_us()}};
  double max_over_mean = 0;
  for (const auto& l : b.moe_layers) max_over_mean = std::max(max_over_mean, l.stats.max_over_mean);
  j["routing"] = {{"sampling_mode", moesim::models::to_string(s.routing.sampling)},
                  {"drop_fraction", b.drop_fraction()},
                  {"padded_fraction", b.padded_fraction()},
                  {"max_over_mean_load", max_over_mean},
                  {"routed", b.routed},
                  {"kept", b.kept},
                  {"dropped", b.dropped},
                  {"padded", b.padded}};
  // (build arrays before inserting: ordered_json references are invalidated by insertions)
  nlohmann::ordered_json stages = nlohmann::ordered_json::array();
  for (const auto& st : b.memory.stages)
    stages.push_back({{"stage", st.stage},
                      {"weights", st.weights},
                      {"grads", st.grads},
                      {"optimizer", st.optimizer},
                      {"activations", st.activations},
                      {"activations_no_recompute", st.activations_no_recompute},
                      {"activations_recompute", st.activations_recompute},
                      {"kv_cache", st.kv_cache},
                      {"comm_buffers", st.comm_buffers},
                      {"total", st.total()}});
  j["memory"] = {{"peak_bytes_per_gpu", b.memory.peak_bytes},
                 {"capacity_bytes_per_gpu", b.memory.capacity_bytes},
                 {"fits", b.memory.fits},
                 {"stages", std::move(stages)}};
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& l : b.moe_layers)
    layers.push_back({{"layer", l.layer},
                      {"stage", l.stage},
                      {"drop_fraction", l.stats.drop_fraction},
                      {"padded_fraction", l.stats.padded_fraction},
                      {"max_over_mean_load", l.stats.max_over_mean},
                      {"rank_max_over_mean_rows", l.rank_max_over_mean},
                      {"cv", l.stats.cv},
                      {"aux_loss", l.stats.aux_loss}});
  j["layers"] = std::move(layers);
  j["simulation"] = {{"compute_ops", b.compute_ops},
                     {"collective_ops", b.collective_ops},
                     {"flows", r.flows},
                     {"events", r.exec.events},
                     {"collective_bytes", r.bytes_sent}};
}

nlohmann::ordered_json summary_json(const Scenario& s) {
  nlohmann::ordered_json j;
  j["moesim_version"] = MOESIM_VERSION;
  j["scenario"] = s.name;
  j["seed"] = s.seed;
  j["parallel"] = {{"dp", s.parallel.dp},
                   {"tp", s.parallel.tp},
                   {"ep", s.parallel.ep},
                   {"pp", s.parallel.pp},
                   {"micro_batches", s.parallel.micro_batches}};
  j["workload"] = {{"mode", moesim::engine::to_string(s.workload.mode)},
                   {"tokens_per_step", s.workload.tokens_per_step()}};
  if (s.has_model) {
    const auto pc = moesim::models::count_params(s.model);
    j["model"] = {{"name", s.model.name}, {"params_total", pc.params_total()}, {"params_active", pc.params_active()}};
  }
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moesim: discrete-event simulator and cost model for Mixture-of-Experts GPU systems"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "print the version and exit");

  // run
  auto* run = app.add_subcommand("run", "load a scenario, simulate it, print a summary");
  std::string run_file;
  std::vector<std::string> run_sets;
  std::optional<std::uint64_t> run_seed;
  std::string run_json;
  run->add_option("scenario", run_file, "scenario YAML")->required();
  run->add_option("--set", run_sets, "override a value: key.path=value (repeatable)");
  run->add_option("--seed", run_seed, "replace the scenario's seed");
  run->add_option("--json", run_json, "write the JSON report to this file ('-' for stdout)");
  std::string run_dot;
  std::string run_trace;
  run->add_option("--trace", run_trace, "write a Chrome/Perfetto trace of the step to this file");
  run->add_option("--dump-topology", run_dot, "write the cluster topology as Graphviz dot to this file");

  // validate
  auto* validate = app.add_subcommand("validate", "parse and check a scenario; report every error");
  std::string val_file;
  std::vector<std::string> val_sets;
  validate->add_option("scenario", val_file, "scenario YAML")->required();
  validate->add_option("--set", val_sets, "override a value: key.path=value (repeatable)");

  // calibrate
  auto* calibrate = app.add_subcommand("calibrate", "fit kernel cost models to a measurement run directory");
  std::string cal_dir;
  std::string cal_out;
  std::string cal_gpu = "h100-sxm";
  std::string cal_points;
  bool cal_strict = false;
  calibrate->add_option("measurements", cal_dir, "validation_kernels/measurements/<gpu>/<run_id>")->required();
  calibrate->add_option("-o,--output", cal_out, "write the fitted profile YAML here");
  calibrate->add_option("--gpu", cal_gpu, "catalog GPU the measurements were taken on (default h100-sxm)");
  calibrate->add_option("--points", cal_points, "write every fitted/held-out point as CSV here");
  calibrate->add_flag("--strict", cal_strict, "fail when a kernel family has too few points to fit");

  // validate-model
  auto* validate_model =
      app.add_subcommand("validate-model", "held-out error of a fitted profile against a measurement run");
  std::string vm_profile;
  std::string vm_dir;
  std::string vm_gpu = "h100-sxm";
  validate_model->add_option("profile", vm_profile, "profile YAML written by calibrate")->required();
  validate_model->add_option("measurements", vm_dir, "measurement run directory")->required();
  validate_model->add_option("--gpu", vm_gpu, "catalog GPU (default h100-sxm)");

  // describe
  auto* describe = app.add_subcommand("describe", "print the catalogs and registries");
  std::vector<std::string> describe_what;
  describe->add_option("what", describe_what, "gpus | models | units | KIND NAME");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitConfig;
  }

  if (show_version) {
    fmt::print("moesim {}\n", MOESIM_VERSION);
    return kExitOk;
  }

  try {
    if (*run) {
      const Scenario s = moesim::engine::load_scenario(run_file, {run_sets, run_seed});
      print_summary(s, stdout);
      nlohmann::ordered_json report = summary_json(s);
      std::optional<moesim::hw::Topology> topo;
      if (s.has_cluster) topo.emplace(moesim::hw::build_topology(s.cluster));
      if (!run_dot.empty()) {
        if (!topo) throw std::runtime_error("--dump-topology needs a cluster section");
        std::ofstream f(run_dot);
        topo->write_dot(f);
        if (!f) throw std::runtime_error("cannot write " + run_dot);
      }
      if (s.workload.mode == moesim::engine::WorkloadMode::kCollective) run_collective(s, *topo, report);
      using moesim::engine::WorkloadMode;
      if (s.workload.mode == WorkloadMode::kRouting) {
        run_routing(s, report);
      } else if (s.workload.mode != WorkloadMode::kCollective) {
        run_step(s, run_trace, report);
      } else if (!run_trace.empty()) {
        throw std::runtime_error("--trace is written for train/prefill/decode workloads only");
      }
      if (!run_json.empty()) {
        const std::string text = report.dump(2) + "\n";
        if (run_json == "-") {
          std::fputs(text.c_str(), stdout);
        } else {
          std::ofstream f(run_json);
          if (!f || !(f << text)) {
            fmt::print(stderr, "moesim: cannot write {}\n", run_json);
            return kExitRuntime;
          }
        }
      }
      return kExitOk;
    }
    if (*validate) {
      const Scenario s = moesim::engine::load_scenario(val_file, {val_sets, std::nullopt});
      fmt::print("{}: ok (scenario '{}')\n", val_file, s.name);
      return kExitOk;
    }
    if (*calibrate) {
      namespace cost = moesim::models::cost;
      cost::CalibrateOptions o;
      o.gpu = moesim::engine::gpu_params(moesim::engine::find_gpu(cal_gpu, "--gpu"));
      o.strict = cal_strict;
      const cost::CalibrationResult r = cost::calibrate(cal_dir, o);
      std::ostringstream os;
      cost::print_report(r.profile, r.report, os);
      std::fputs(os.str().c_str(), stdout);
      if (!cal_out.empty()) {
        cost::write_profile_file(r.profile, cal_out);
        fmt::print(stderr, "moesim calibrate: wrote {}\n", cal_out);
      }
      if (!cal_points.empty()) {
        std::ofstream f(cal_points);
        cost::write_points_csv(r.report, f);
        if (!f) throw std::runtime_error("cannot write " + cal_points);
      }
      return kExitOk;
    }
    if (*validate_model) {
      namespace cost = moesim::models::cost;
      cost::CalibrateOptions o;
      o.gpu = moesim::engine::gpu_params(moesim::engine::find_gpu(vm_gpu, "--gpu"));
      const cost::CostProfile p = cost::read_profile_file(vm_profile);
      const cost::FitReport rep = cost::validate_profile(p, vm_dir, o);
      std::ostringstream os;
      cost::print_report(p, rep, os);
      std::fputs(os.str().c_str(), stdout);
      return kExitOk;
    }
    if (*describe) {
      if (describe_what.empty() || describe_what[0] == "units") {
        for (auto f : {moesim::sim::UnitFamily::kBytes, moesim::sim::UnitFamily::kBandwidth,
                       moesim::sim::UnitFamily::kTime, moesim::sim::UnitFamily::kFlopRate})
          fmt::print("{:<12} {}\n", moesim::sim::family_name(f), moesim::sim::accepted_units(f));
        return kExitOk;
      }
      if (describe_what[0] == "gpus") {
        std::ostringstream os;
        moesim::hw::describe_gpus(os, moesim::hw::load_default_gpu_catalog());
        std::fputs(os.str().c_str(), stdout);
        return kExitOk;
      }
      if (describe_what[0] == "models") {
        std::ostringstream os;
        moesim::models::describe_models(os);
        std::fputs(os.str().c_str(), stdout);
        return kExitOk;
      }
      fmt::print(stderr, "moesim describe: unknown kind '{}' (known: units, gpus, models)\n", describe_what[0]);
      return kExitConfig;
    }
    std::fputs(app.help().c_str(), stdout);
    return kExitOk;
  } catch (const moesim::config::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return kExitConfig;
  } catch (const std::exception& e) {
    fmt::print(stderr, "moesim: error: {}\n", e.what());
    return kExitRuntime;
  }
}
