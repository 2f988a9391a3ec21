// How simulating one training step grows with the cluster: DeepSeek-V3 (counts routing, dropless,
// fp8 dispatch, 20 SMs per all-to-all) on H800 nodes of 8 GPUs, PP16 x DPn with EP = min(64, DP),
// 16 micro-batches of one 4,096-token sequence per DP rank (weak scaling: work per GPU constant),
// every layer's dispatch and combine on the analytical network model and on the flow network.
//
// Each point runs in a forked child (so its peak RSS is its own and a CPU-time limit can stop it);
// the parent prints wall seconds per phase, user CPU seconds, peak RSS (wait4 ru_maxrss), ops,
// collectives, flows and events.
//
// Usage:
//   scaling_bench [--gpus 64,128,...] [--network analytical,flow] [--limit SECONDS]
//                 [--micro-batches N] [--recompute] [--all-to-all direct|hierarchical|deepep_normal]
//       (deepep_normal: execution.dispatcher deepep_normal, whose plan is a direct exchange)
//   scaling_bench --scenario FILE [--set key=value ...] [--repeat N]
//       phase split of one scenario (load, routing, graph, memory, topology, play, checks, report)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "config/reader.hpp"
#include "engine/run.hpp"
#include "engine/simulate.hpp"

using namespace moesim;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double cpu() { return engine::thread_cpu_seconds(); }

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = s.find(',', i);
    out.push_back(s.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return out;
}

std::string g_all_to_all = "direct";  // execution.all_to_all of every point

std::string scenario_yaml(int gpus, const std::string& network, int micro_batches, bool recompute) {
  const int pp = 16, dp = gpus / pp, ep = dp < 64 ? dp : 64;
  return fmt::format(R"(name: deepseek-v3-train-{gpus}
model: deepseek-v3
cluster:
  gpu: h800
  nodes: {nodes}
  gpus_per_node: 8
  intra_node: {{ fabric: nvswitch, bandwidth: 200GB/s, latency: 1us }}
  inter_node: {{ fabric: rail-fat-tree, nic_bandwidth: 400Gb/s, nics_per_node: 8, latency: 2us }}
parallel: {{ dp: {dp}, tp: 1, ep: {ep}, pp: {pp}, micro_batches: {mb} }}
workload: {{ mode: train, seq_len: 4096, global_batch: {gb}, recompute: {rc} }}
routing: {{ sampling: counts, capacity_factor: none }}
execution: {{ comm_sms: 20, dispatch_dtype: fp8, {a2a} }}
network: {{ model: {net} }}
seed: 5
)",
                     fmt::arg("gpus", gpus), fmt::arg("nodes", gpus / 8), fmt::arg("dp", dp), fmt::arg("ep", ep),
                     fmt::arg("pp", pp), fmt::arg("mb", micro_batches), fmt::arg("gb", dp * micro_batches),
                     fmt::arg("rc", recompute ? "true" : "false"), fmt::arg("net", network),
                     fmt::arg("a2a", g_all_to_all == "deepep_normal" ? std::string("dispatcher: deepep_normal")
                                                                     : "all_to_all: " + g_all_to_all));
}

/// One point in this process: prints one result line (without the RSS/CPU columns) to `out`.
void run_point(int gpus, const std::string& network, int micro_batches, bool recompute, std::FILE* out) {
  const auto t0 = Clock::now();
  const engine::Scenario s = engine::parse_scenario(
      config::Document::load_string(scenario_yaml(gpus, network, micro_batches, recompute), "scaling.yaml"));
  const double load_s = since(t0);
  const engine::StepReport r = engine::simulate_step(s, engine::simulate_options(s));
  const auto& b = r.built;
  std::fprintf(out, "%5d %-10s pp16 dp%-4d ep%-3d %8.2f %7.2f %7.2f %7.2f %7.2f %9llu %7llu %10llu %9llu %10.1f\n",
               gpus, network.c_str(), s.parallel.dp, s.parallel.ep, since(t0), load_s + b.host_route_s,
               b.host_graph_s + b.host_memory_s, r.host_topology_s, r.host_play_s + r.host_check_s,
               static_cast<unsigned long long>(b.graph.size()), static_cast<unsigned long long>(b.collective_ops),
               static_cast<unsigned long long>(r.flows), static_cast<unsigned long long>(r.exec.events),
               r.exec.step_time.to_ms());
  if (std::getenv("MOESIM_NET_STATS") != nullptr) {
    const auto& st = r.net_stats;
    std::fprintf(stderr,
                 "  flow network: %llu flows, %llu full / %llu arrival / %llu partial / %llu fast solves, %llu "
                 "skipped, %llu repairs, "
                 "%llu flows re-solved (%llu in full, %llu in arrival, %llu in partial solves), %llu drain instants\n",
                 static_cast<unsigned long long>(st.flows_started), static_cast<unsigned long long>(st.full_solves),
                 static_cast<unsigned long long>(st.arrival_solves), static_cast<unsigned long long>(st.partial_solves),
                 static_cast<unsigned long long>(st.fast_solves), static_cast<unsigned long long>(st.skipped_solves),
                 static_cast<unsigned long long>(st.repairs), static_cast<unsigned long long>(st.flows_resolved),
                 static_cast<unsigned long long>(st.flows_full), static_cast<unsigned long long>(st.flows_arrival),
                 static_cast<unsigned long long>(st.flows_partial), static_cast<unsigned long long>(st.drain_events));
  }
  std::fflush(out);
}

int scaling(const std::vector<int>& gpus, const std::vector<std::string>& nets, int limit_s, int micro_batches,
            bool recompute) {
  std::printf(
      "DeepSeek-V3 training step, PP16 x DP(gpus/16), EP=min(64,DP), %d micro-batches x 1 seq of 4096 tokens per DP "
      "rank%s, counts routing, dropless, fp8 dispatch, %s all-to-all; limit %d s CPU per point; phase columns "
      "route/graph/topo/play are CPU seconds, wall_s is the whole point\n",
      micro_batches, recompute ? ", full recompute" : "", g_all_to_all.c_str(), limit_s);
  std::printf("%5s %-10s %-16s %8s %7s %7s %7s %7s %9s %7s %10s %9s %10s %8s %9s\n", "gpus", "network", "layout",
              "wall_s", "route", "graph", "topo", "play", "ops", "colls", "flows", "events", "step_ms", "cpu_s",
              "maxrss_MiB");
  for (const auto& net : nets)
    for (int g : gpus) {
      int fds[2];
      if (pipe(fds) != 0) return 1;
      const pid_t pid = fork();
      if (pid < 0) return 1;
      if (pid == 0) {
        close(fds[0]);
        // The limit is CPU time (RLIMIT_CPU -> SIGXCPU), so a loaded machine does not cut points
        // short; a wall-clock alarm at 5x the limit is the safety net.
        struct rlimit rl {};
        rl.rlim_cur = static_cast<rlim_t>(limit_s);
        rl.rlim_max = static_cast<rlim_t>(limit_s) + 5;
        setrlimit(RLIMIT_CPU, &rl);
        alarm(static_cast<unsigned>(5 * limit_s));
        std::FILE* out = fdopen(fds[1], "w");
        try {
          run_point(g, net, micro_batches, recompute, out);
        } catch (const std::exception& e) {
          std::fprintf(out, "%5d %-10s error: %s\n", g, net.c_str(), e.what());
        }
        std::fclose(out);
        _exit(0);
      }
      close(fds[1]);
      std::string line;
      char buf[512];
      ssize_t n;
      while ((n = read(fds[0], buf, sizeof buf)) > 0) line.append(buf, static_cast<std::size_t>(n));
      close(fds[0]);
      int status = 0;
      struct rusage ru {};
      wait4(pid, &status, 0, &ru);
      const double cpu = static_cast<double>(ru.ru_utime.tv_sec) + 1e-6 * static_cast<double>(ru.ru_utime.tv_usec);
      const double rss_mib = static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
      if (WIFSIGNALED(status)) {
        std::printf(
            "%5d %-10s pp16 dp%-4d stopped by signal %d (%s): limit %d s CPU (or 5x wall); cpu %.1f s, maxrss %.0f "
            "MiB\n",
            g, net.c_str(), g / 16, WTERMSIG(status), strsignal(WTERMSIG(status)), limit_s, cpu, rss_mib);
      } else {
        if (!line.empty() && line.back() == '\n') line.pop_back();
        std::printf("%s %8.2f %9.0f\n", line.c_str(), cpu, rss_mib);
      }
      std::fflush(stdout);
    }
  return 0;
}

int phase_split(const std::string& file, const std::vector<std::string>& sets, int repeat) {
  std::printf("CPU seconds of this thread per phase (CLOCK_THREAD_CPUTIME_ID)\n");
  for (int i = 0; i < repeat; ++i) {
    const double t0 = cpu();
    engine::LoadOptions lo;
    lo.overrides = sets;
    const engine::Scenario s = engine::load_scenario(file, lo);
    const double load_s = cpu() - t0;
    const double t1 = cpu();
    const engine::StepReport r = engine::simulate_step(s, engine::simulate_options(s));
    const double sim_s = cpu() - t1;
    const double t2 = cpu();
    const engine::RunResult rr = engine::run_scenario(s);  // simulate again + JSON report and summary
    const double run_s = cpu() - t2;
    const auto& b = r.built;
    const double report_s = run_s - sim_s;
    std::printf(
        "%s: load %.4f | routing %.4f | graph %.4f | memory %.5f | topology %.4f | play %.4f | checks %.5f | "
        "simulate_step %.4f | report (run_scenario - simulate_step) %.4f | non-routing (simulate_step - routing) "
        "%.4f s | %zu ops, %llu events, %zu report bytes\n",
        file.c_str(), load_s, b.host_route_s, b.host_graph_s, b.host_memory_s, r.host_topology_s, r.host_play_s,
        r.host_check_s, sim_s, report_s, sim_s - b.host_route_s, b.graph.size(),
        static_cast<unsigned long long>(r.exec.events), rr.report.dump().size());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> gpus = {64, 128, 256, 512, 1024, 2048};
  std::vector<std::string> nets = {"analytical", "flow"};
  int limit = 120, mb = 16, repeat = 3;
  bool recompute = false;
  std::string scenario;
  std::vector<std::string> sets;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--gpus") {
      gpus.clear();
      for (const auto& g : split(next())) gpus.push_back(std::atoi(g.c_str()));
    } else if (a == "--network") {
      nets = split(next());
    } else if (a == "--limit") {
      limit = std::atoi(next().c_str());
    } else if (a == "--micro-batches") {
      mb = std::atoi(next().c_str());
    } else if (a == "--recompute") {
      recompute = true;
    } else if (a == "--all-to-all") {
      g_all_to_all = next();
    } else if (a == "--scenario") {
      scenario = next();
    } else if (a == "--set") {
      sets.push_back(next());
    } else if (a == "--repeat") {
      repeat = std::atoi(next().c_str());
    } else {
      std::fprintf(stderr,
                   "usage: %s [--gpus 64,128,...] [--network analytical,flow] [--limit S] [--micro-batches N] "
                   "[--recompute] [--all-to-all direct|hierarchical|deepep_normal] | --scenario FILE [--set k=v ...] "
                   "[--repeat N]\n",
                   argv[0]);
      return 2;
    }
  }
  for (int g : gpus)
    if (g != 64 && (g < 128 || g % 128 != 0)) {
      std::fprintf(stderr, "gpus must be 64 or a multiple of 128 (PP16 x DP on 8-GPU nodes)\n");
      return 2;
    }
  try {
    if (!scenario.empty()) return phase_split(scenario, sets, repeat);
    return scaling(gpus, nets, limit, mb, recompute);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "scaling_bench: %s\n", e.what());
    return 1;
  }
}
