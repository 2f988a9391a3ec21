/// libFuzzer target over every input format moesim reads. The format is chosen by the
/// environment variable MOESIM_FUZZ_FORMAT (tools/fuzz.sh runs each with its own corpus in
/// tests/fuzz/corpus/<format>/):
///
///   units     the unit parser (every family), --max-memory / --max-time / --seed texts
///   scenario  a scenario file (parse and validate)
///   set       first line a `--set key.path=value`, the rest a scenario
///   sweep     a sweep file (beside links to scenarios/*.yaml, so `scenario: ../default.yaml`
///             resolves as in scenarios/sweeps/), loaded with resource limits
///   plan      a planner file (its `base:` resolves against scenarios/plans/)
///   trace     a routing trace CSV, read against mixtral-8x7b (top-2) when it mentions expert_1,
///             else switch-base-128 (top-1)
///   csv       a calibration run: runs.csv, measurements.csv and counts.csv separated by lines
///             "=====", calibrated (and each part parsed as a CSV table)
///   profile   a kernel cost profile
///
/// Any crash, sanitizer report, hang, or exception other than the documented error types
/// (config::ConfigError for bad input) is a bug. Files are written under build-fuzz/work-<pid>/.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "config/reader.hpp"
#include "engine/estimate.hpp"
#include "engine/gpu_params.hpp"
#include "engine/scenario.hpp"
#include "explore/plan.hpp"
#include "explore/sweep.hpp"
#include "models/cost/calibrate.hpp"
#include "models/cost/csv.hpp"
#include "models/cost/profile.hpp"
#include "models/model_spec.hpp"
#include "models/router.hpp"
#include "sim/units.hpp"

namespace {

namespace fs = std::filesystem;
using moesim::config::ConfigError;

enum class Format { kUnits, kScenario, kSet, kSweep, kPlan, kTrace, kCsv, kProfile };
Format g_format = Format::kScenario;
fs::path g_work;

void write(const fs::path& p, std::string_view text) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
}

void fuzz_units(std::string_view text) {
  for (auto f : {moesim::sim::UnitFamily::kBytes, moesim::sim::UnitFamily::kBandwidth, moesim::sim::UnitFamily::kTime,
                 moesim::sim::UnitFamily::kFlopRate, moesim::sim::UnitFamily::kFrequency}) {
    try {
      (void)moesim::sim::parse_quantity(text, f);
    } catch (const moesim::sim::UnitError&) {
    }
  }
  try {
    (void)moesim::sim::parse_time(text);
  } catch (const moesim::sim::UnitError&) {
  }
  try {
    (void)moesim::engine::ResourceLimits::parse(std::string(text), std::string(text));
  } catch (const ConfigError&) {
  }
}

void fuzz_scenario(std::string_view text) {
  try {
    auto doc = moesim::config::Document::load_string(std::string(text), "fuzz.yaml");
    const auto s = moesim::engine::parse_scenario(doc);
    (void)moesim::engine::estimate_resources(s);
  } catch (const ConfigError&) {
  }
}

void fuzz_set(std::string_view text) {
  const std::size_t nl = text.find('\n');
  if (nl == std::string_view::npos) return;
  try {
    auto doc = moesim::config::Document::load_string(std::string(text.substr(nl + 1)), "fuzz.yaml");
    doc.apply_override(text.substr(0, nl));
    (void)moesim::engine::parse_scenario(doc);
  } catch (const ConfigError&) {
  }
}

void fuzz_sweep(std::string_view text) {
  const fs::path f = g_work / "sweeps" / "fuzz.yaml";
  write(f, text);
  moesim::explore::SweepOptions o;
  o.limits = moesim::engine::ResourceLimits::defaults();
  o.limits->max_seconds = 20;  // a few thousand points at most: every input stays fast
  o.limits->max_memory_bytes = 1 << 30;
  try {
    const auto sw = moesim::explore::load_sweep(f.string(), o);
    (void)sw.header();
  } catch (const ConfigError&) {
  }
}

void fuzz_plan(std::string_view text) {
  try {
    (void)moesim::explore::load_plan_string(std::string(text), "scenarios/plans/fuzz.yaml");
  } catch (const ConfigError&) {
  }
}

void fuzz_trace(std::string_view text) {
  static const auto catalog = moesim::models::load_default_model_catalog();
  const bool mixtral = text.find("expert_1") != std::string_view::npos;  // a top-2 header
  const auto* m = moesim::models::find_model(catalog, mixtral ? "mixtral-8x7b" : "switch-base-128");
  const fs::path f = g_work / "trace.csv";
  write(f, text);
  try {
    (void)moesim::models::load_routing_trace(f.string(), *m, mixtral ? 2 : 1);
  } catch (const ConfigError&) {
  }
}

void fuzz_csv(std::string_view text) {
  // runs.csv ===== measurements.csv ===== counts.csv (a missing part: no such file)
  const fs::path dir = g_work / "run";
  fs::create_directories(dir);
  const char* names[] = {"runs.csv", "measurements.csv", "counts.csv"};
  std::size_t pos = 0;
  for (const char* name : names) {
    fs::remove(dir / name);
    if (pos > text.size()) continue;
    const std::size_t sep = text.find("\n=====\n", pos);
    const std::string_view part = text.substr(pos, sep == std::string_view::npos ? std::string_view::npos : sep - pos);
    write(dir / name, part);
    try {
      (void)moesim::models::cost::CsvTable::parse(part, name);
    } catch (const ConfigError&) {
    }
    pos = sep == std::string_view::npos ? text.size() + 1 : sep + 7;
  }
  static const moesim::models::cost::GpuParams gpu =
      moesim::engine::gpu_params(moesim::engine::find_gpu("h100-sxm", "fuzz"));
  for (bool strict : {false, true}) {
    moesim::models::cost::CalibrateOptions o;
    o.gpu = gpu;
    o.strict = strict;
    try {
      (void)moesim::models::cost::calibrate(dir.string(), o);
    } catch (const ConfigError&) {
    }
  }
}

void fuzz_profile(std::string_view text) {
  try {
    (void)moesim::models::cost::read_profile_string(std::string(text), "fuzz-profile.yaml");
  } catch (const ConfigError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* f = std::getenv("MOESIM_FUZZ_FORMAT");
  const std::string name = f != nullptr ? f : "scenario";
  if (name == "units")
    g_format = Format::kUnits;
  else if (name == "scenario")
    g_format = Format::kScenario;
  else if (name == "set")
    g_format = Format::kSet;
  else if (name == "sweep")
    g_format = Format::kSweep;
  else if (name == "plan")
    g_format = Format::kPlan;
  else if (name == "trace")
    g_format = Format::kTrace;
  else if (name == "csv")
    g_format = Format::kCsv;
  else if (name == "profile")
    g_format = Format::kProfile;
  else {
    std::fprintf(stderr, "MOESIM_FUZZ_FORMAT=%s: not one of units, scenario, set, sweep, plan, trace, csv, profile\n",
                 name.c_str());
    std::exit(2);
  }
  // A scratch directory with links to the shipped scenarios, so that sweep files written to
  // work/sweeps/ reach them as ../NAME.yaml (as the examples in scenarios/sweeps/ do).
  g_work = fs::absolute(fs::path("build-fuzz") / ("work-" + std::to_string(::getpid())));
  fs::create_directories(g_work / "sweeps");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("scenarios", ec))
    if (e.is_regular_file()) fs::create_symlink(fs::absolute(e.path()), g_work / e.path().filename(), ec);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  switch (g_format) {
    case Format::kUnits:
      fuzz_units(text);
      break;
    case Format::kScenario:
      fuzz_scenario(text);
      break;
    case Format::kSet:
      fuzz_set(text);
      break;
    case Format::kSweep:
      fuzz_sweep(text);
      break;
    case Format::kPlan:
      fuzz_plan(text);
      break;
    case Format::kTrace:
      fuzz_trace(text);
      break;
    case Format::kCsv:
      fuzz_csv(text);
      break;
    case Format::kProfile:
      fuzz_profile(text);
      break;
  }
  return 0;
}
