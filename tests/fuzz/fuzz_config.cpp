/// libFuzzer target: arbitrary bytes into the unit parser and the scenario loader. Any crash,
/// sanitizer report, or exception other than the documented error types is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/reader.hpp"
#include "engine/scenario.hpp"
#include "sim/units.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
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
  }
  return 0;
}
