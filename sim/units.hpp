#pragma once
/// \file
/// Quantities with units written inside the value ("450GB/s", "80GiB", "2us", "989TFLOPS").
///
/// Configs carry their units in the text so nobody has to guess whether 400 means Gb/s or
/// GB/s. A parse turns the text into a plain number in the family's base unit (bytes, bytes per
/// second, picoseconds, FLOP per second). A bare number where a unit is required, an unknown
/// unit ("12 GBs"), a negative value ("-3us"), or a value that overflows ("1e999GB/s") is an
/// error with a message that lists the accepted units.
///
/// Prefixes: K, M, G, T, P are decimal (1e3...), Ki, Mi, Gi, Ti, Pi are binary (1024...).
/// A lowercase 'b' is a bit, an uppercase 'B' a byte: 400Gb/s == 50GB/s.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "sim/time.hpp"

namespace moesim::sim {

enum class UnitFamily {
  kBytes,      ///< B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB -> bytes
  kBandwidth,  ///< B/s .. PB/s, KiB/s .., b/s, Kb/s, Mb/s, Gb/s, Tb/s -> bytes per second
  kTime,       ///< ps, ns, us (or µs), ms, s -> picoseconds (rounded to nearest ps)
  kFlopRate,   ///< FLOPS, KFLOPS .. PFLOPS (also written TFLOP/s) -> FLOP per second
  kFrequency,  ///< Hz, kHz, MHz, GHz -> hertz (clock rates)
};

std::string_view family_name(UnitFamily f);
/// Human list of accepted units, for error messages: "B, KB, MB, ... (decimal), KiB, ...".
std::string accepted_units(UnitFamily f);

/// Raised by the quantity parsers. The message never contains a file location: the config
/// layer adds file:line:col and the key.
class UnitError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Parse "<number><unit>" or "<number> <unit>" (one optional space). The number is a plain
/// decimal with optional fraction and exponent ("1.5", "2e3"); no sign, no hex, no inf/nan.
/// Returns the value in the family's base unit. Zero is accepted here; the config layer
/// decides whether a zero is allowed for a given key.
double parse_quantity(std::string_view text, UnitFamily family);

inline double parse_bytes(std::string_view t) { return parse_quantity(t, UnitFamily::kBytes); }
inline double parse_bandwidth(std::string_view t) { return parse_quantity(t, UnitFamily::kBandwidth); }
inline double parse_flop_rate(std::string_view t) { return parse_quantity(t, UnitFamily::kFlopRate); }
inline double parse_frequency(std::string_view t) { return parse_quantity(t, UnitFamily::kFrequency); }
/// Time is rounded to the nearest picosecond; values beyond SimTime::max() are errors.
SimTime parse_time(std::string_view t);

/// Shortest text that parses back to exactly the same value ("450GB/s", "1.5us", "80GiB").
std::string format_bytes(double bytes);
std::string format_bandwidth(double bytes_per_s);
std::string format_flop_rate(double flops);

}  // namespace moesim::sim
