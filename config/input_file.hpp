#pragma once
/// \file
/// Reading an input file given by a user: every reader of scenarios, sweeps, plans, catalogs,
/// cost profiles, routing traces and calibration CSVs goes through `read_input_file`.
///
/// Only regular files are read, never a FIFO (it would block with no writer), a device
/// (`/dev/zero` never ends) or a directory; and never more than a size cap, so a file that is
/// far too large (or grows while it is read) is a located configuration error (exit 2) instead
/// of an unbounded allocation. The file is opened non-blocking so that even a FIFO swapped in
/// after the check cannot block; `fstat` on the open descriptor decides.

#include <cstdint>
#include <string>
#include <string_view>

namespace moesim::config {

/// Size caps (bytes) per kind of input, documented in README "Hostile input".
inline constexpr std::uint64_t kMaxYamlBytes = std::uint64_t{64} << 20;  ///< scenario, sweep, plan, profile
inline constexpr std::uint64_t kMaxTraceBytes = std::uint64_t{2} << 30;  ///< routing trace CSV
inline constexpr std::uint64_t kMaxCsvBytes = std::uint64_t{512} << 20;  ///< calibration CSVs

/// The whole content of `path`. Throws config::ConfigError located at `path` (key "" unless
/// `key` is given) when the file is missing, unreadable, not a regular file, or larger than
/// `max_bytes`. `what` names the file's role in the message ("routing trace").
std::string read_input_file(const std::string& path, std::uint64_t max_bytes, std::string_view what,
                            const std::string& key = {});

/// Why `path` cannot be read as an input file ("" when it is a readable regular file of at
/// most `max_bytes`): the same checks as read_input_file without reading the content.
std::string input_file_problem(const std::string& path, std::uint64_t max_bytes);

}  // namespace moesim::config
