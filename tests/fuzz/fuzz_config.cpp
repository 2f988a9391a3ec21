/// libFuzzer target: arbitrary bytes into the unit parser and the scenario loader. Any crash,
/// sanitizer report, or exception other than the documented error types is a bug. First byte
/// mod 5: 0 units, 1-2 scenario, 3 override line + scenario, 4 planner file (its `base:` resolves
/// against scenarios/plans/, so the shipped scenarios are reachable; the fuzzer runs from the
/// repository root).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/reader.hpp"
#include "engine/scenario.hpp"
#include "explore/plan.hpp"
#include "sim/units.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0:
      for (auto f : {moesim::sim::UnitFamily::kBytes, moesim::sim::UnitFamily::kBandwidth,
                     moesim::sim::UnitFamily::kTime, moesim::sim::UnitFamily::kFlopRate}) {
        try {
          (void)moesim::sim::parse_quantity(text, f);
        } catch (const moesim::sim::UnitError&) {
        }
      }
      try {
        (void)moesim::sim::parse_time(text);
      } catch (const moesim::sim::UnitError&) {
      }
      break;
    case 1:
    case 2: {
      try {
        auto doc = moesim::config::Document::load_string(std::string(text), "fuzz.yaml");
        (void)moesim::engine::parse_scenario(doc);
      } catch (const moesim::config::ConfigError&) {
      }
      break;
    }
    case 3: {
      // First line is an override, the rest a scenario.
      const std::size_t nl = text.find('\n');
      if (nl == std::string_view::npos) return 0;
      try {
        auto doc = moesim::config::Document::load_string(std::string(text.substr(nl + 1)), "fuzz.yaml");
        doc.apply_override(text.substr(0, nl));
        (void)moesim::engine::parse_scenario(doc);
      } catch (const moesim::config::ConfigError&) {
      }
      break;
    }
    case 4: {
      try {
        (void)moesim::explore::load_plan_string(std::string(text), "scenarios/plans/fuzz.yaml");
      } catch (const moesim::config::ConfigError&) {
      }
      break;
    }
  }
  return 0;
}
