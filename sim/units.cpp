#include "sim/units.hpp"

#include <fmt/format.h>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace moesim::sim {

namespace {

struct UnitDef {
  std::string_view name;
  double scale;  // multiply the number by this to get the base unit
};

// Bytes: SI prefixes are powers of 1000, IEC prefixes powers of 1024 (IEC 80000-13).
constexpr std::array kByteUnits{
    UnitDef{"B", 1.0},
    UnitDef{"KB", 1e3},
    UnitDef{"MB", 1e6},
    UnitDef{"GB", 1e9},
    UnitDef{"TB", 1e12},
    UnitDef{"PB", 1e15},
    UnitDef{"KiB", 1024.0},
    UnitDef{"MiB", 1048576.0},
    UnitDef{"GiB", 1073741824.0},
    UnitDef{"TiB", 1099511627776.0},
    UnitDef{"PiB", 1125899906842624.0},
};
// Bandwidth: bytes per second (B) and bits per second (b). 400Gb/s == 50GB/s.
constexpr std::array kBandwidthUnits{
    UnitDef{"B/s", 1.0},
    UnitDef{"KB/s", 1e3},
    UnitDef{"MB/s", 1e6},
    UnitDef{"GB/s", 1e9},
    UnitDef{"TB/s", 1e12},
    UnitDef{"PB/s", 1e15},
    UnitDef{"KiB/s", 1024.0},
    UnitDef{"MiB/s", 1048576.0},
    UnitDef{"GiB/s", 1073741824.0},
    UnitDef{"TiB/s", 1099511627776.0},
    UnitDef{"b/s", 0.125},
    UnitDef{"Kb/s", 125.0},
    UnitDef{"Mb/s", 125e3},
    UnitDef{"Gb/s", 125e6},
    UnitDef{"Tb/s", 125e9},
};
// Time, in picoseconds.
constexpr std::array kTimeUnits{
    UnitDef{"ps", 1.0},        UnitDef{"ns", 1e3}, UnitDef{"us", 1e6},
    UnitDef{"\xC2\xB5s", 1e6}, UnitDef{"ms", 1e9}, UnitDef{"s", 1e12},
};
constexpr std::array kFlopUnits{
    UnitDef{"FLOPS", 1.0},    UnitDef{"KFLOPS", 1e3},   UnitDef{"MFLOPS", 1e6}, UnitDef{"GFLOPS", 1e9},
    UnitDef{"TFLOPS", 1e12},  UnitDef{"PFLOPS", 1e15},  UnitDef{"FLOP/s", 1.0}, UnitDef{"GFLOP/s", 1e9},
    UnitDef{"TFLOP/s", 1e12}, UnitDef{"PFLOP/s", 1e15},
};

constexpr std::array kFrequencyUnits{
    UnitDef{"Hz", 1.0},
    UnitDef{"kHz", 1e3},
    UnitDef{"MHz", 1e6},
    UnitDef{"GHz", 1e9},
};

template <std::size_t N>
std::string join_units(const std::array<UnitDef, N>& units) {
  std::string out;
  for (const auto& u : units) {
    if (!out.empty()) out += ", ";
    out += u.name;
  }
  return out;
}

template <std::size_t N>
const UnitDef* find_unit(const std::array<UnitDef, N>& units, std::string_view name) {
  for (const auto& u : units)
    if (u.name == name) return &u;
  return nullptr;
}

const UnitDef* lookup(UnitFamily f, std::string_view name) {
  switch (f) {
    case UnitFamily::kBytes:
      return find_unit(kByteUnits, name);
    case UnitFamily::kBandwidth:
      return find_unit(kBandwidthUnits, name);
    case UnitFamily::kTime:
      return find_unit(kTimeUnits, name);
    case UnitFamily::kFlopRate:
      return find_unit(kFlopUnits, name);
    case UnitFamily::kFrequency:
      return find_unit(kFrequencyUnits, name);
  }
  return nullptr;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

std::string_view family_name(UnitFamily f) {
  switch (f) {
    case UnitFamily::kBytes:
      return "a size";
    case UnitFamily::kBandwidth:
      return "a bandwidth";
    case UnitFamily::kTime:
      return "a time";
    case UnitFamily::kFlopRate:
      return "a FLOP rate";
    case UnitFamily::kFrequency:
      return "a frequency";
  }
  return "a quantity";
}

std::string accepted_units(UnitFamily f) {
  switch (f) {
    case UnitFamily::kBytes:
      return join_units(kByteUnits);
    case UnitFamily::kBandwidth:
      return join_units(kBandwidthUnits);
    case UnitFamily::kTime:
      return "ps, ns, us, ms, s";
    case UnitFamily::kFlopRate:
      return join_units(kFlopUnits);
    case UnitFamily::kFrequency:
      return join_units(kFrequencyUnits);
  }
  return {};
}

double parse_quantity(std::string_view text, UnitFamily family) {
  const auto fail = [&](std::string_view why) -> UnitError {
    return UnitError(fmt::format("'{}' is not {}: {} (write a number followed by one of: {})", text,
                                 family_name(family), why, accepted_units(family)));
  };
  // Trim surrounding blanks only; inner structure is strict.
  std::size_t b = 0;
  std::size_t e = text.size();
  while (b < e && (text[b] == ' ' || text[b] == '\t')) ++b;
  while (e > b && (text[e - 1] == ' ' || text[e - 1] == '\t')) --e;
  const std::string_view s = text.substr(b, e - b);
  if (s.empty()) throw fail("empty value");
  if (s[0] == '-') throw fail("negative values are not allowed");
  if (s[0] == '+') throw fail("write the number without a sign");

  // Number: digits [. digits] [e|E [+-] digits]
  std::size_t i = 0;
  std::size_t int_digits = 0;
  while (i < s.size() && is_digit(s[i])) ++i, ++int_digits;
  std::size_t frac_digits = 0;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && is_digit(s[i])) ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) throw fail("it does not start with a number");
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E') && i + 1 < s.size() &&
      (is_digit(s[i + 1]) || ((s[i + 1] == '+' || s[i + 1] == '-') && i + 2 < s.size() && is_digit(s[i + 2])))) {
    i += 2;
    while (i < s.size() && is_digit(s[i])) ++i;
  }
  const std::string number(s.substr(0, i));
  std::string_view unit = s.substr(i);
  if (!unit.empty() && unit[0] == ' ') unit.remove_prefix(1);
  if (unit.empty()) throw fail("a unit is required");
  const UnitDef* def = lookup(family, unit);
  if (def == nullptr) throw fail(fmt::format("unknown unit '{}'", unit));

  errno = 0;
  char* endp = nullptr;
  const double v = std::strtod(number.c_str(), &endp);
  if (endp != number.c_str() + number.size()) throw fail("malformed number");
  if (errno == ERANGE && std::isinf(v)) throw fail("the number is out of range");
  const double scaled = v * def->scale;
  if (!std::isfinite(scaled) || scaled > 1e300) throw fail("the value is out of range");
  // A non-zero number written must not become 0 ("1e-400s" underflows strtod): a zero is only
  // ever a value someone wrote as zero.
  const bool nonzero_digits = number.find_first_of("123456789") < number.find_first_of("eE");
  if (nonzero_digits && !(v >= std::numeric_limits<double>::min() && scaled >= std::numeric_limits<double>::min()))
    throw fail("the number is too small (it underflows to 0)");
  return scaled;
}

SimTime parse_time(std::string_view t) {
  const double ps = parse_quantity(t, UnitFamily::kTime);
  const double rounded = std::nearbyint(ps);
  if (!(rounded < 9223372036854775807.0))
    throw UnitError(fmt::format("'{}' is not a time: it exceeds the simulator's range (about 106 days)", t));
  if (ps > 0 && rounded == 0)
    throw UnitError(fmt::format(
        "'{}' is not a time: it rounds to 0 ps (the simulator counts whole picoseconds; write 0 or at least 1ps)", t));
  return SimTime::from_ps(static_cast<std::int64_t>(rounded));
}

namespace {
std::string format_with(double v, const UnitDef* units, std::size_t count) {
  // The largest unit (among the first `count`, ordered small to large) that keeps the mantissa
  // >= 1 and reproduces v exactly when the text is read back (mantissa * scale == v); if its
  // mantissa is not exact, the next smaller unit is tried (2039GB/s rather than 2.039TB/s, whose
  // product is off in the last bit), down to the base unit. Shortest round-trip mantissa.
  std::size_t k = 0;
  for (std::size_t i = 0; i < count; ++i)
    if (v >= units[i].scale) k = i;
  for (;; --k) {
    const double m = v / units[k].scale;
    if (m * units[k].scale == v || k == 0) return fmt::format("{}{}", k == 0 ? v : m, units[k].name);
  }
}
}  // namespace

std::string format_bytes(double bytes) {
  // A binary unit when the value is a whole number of the largest binary unit not above it
  // (80GiB, 512MiB), else SI (141GB, 180GB rather than 175781250KiB).
  for (int k = 10; k >= 6; --k) {
    const UnitDef& u = kByteUnits[static_cast<std::size_t>(k)];
    if (bytes >= u.scale) {
      if (std::fmod(bytes, u.scale) == 0) return fmt::format("{}{}", bytes / u.scale, u.name);
      break;
    }
  }
  return format_with(bytes, kByteUnits.data(), 6);
}

std::string format_bandwidth(double bps) { return format_with(bps, kBandwidthUnits.data(), 6); }

std::string format_flop_rate(double flops) { return format_with(flops, kFlopUnits.data(), 6); }

}  // namespace moesim::sim
