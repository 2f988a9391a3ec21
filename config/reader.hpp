#pragma once
/// \file
/// Parse-once configuration reading with locations.
///
/// yaml-cpp nodes never leave this layer. Each subsystem reads its section through `Node`,
/// which (1) remembers the dotted key path and the file:line:col of every value, (2) records
/// which keys were read so that `finish()` can report every unknown key with a did-you-mean,
/// and (3) collects every problem in a shared `Diagnostics` instead of stopping at the first.
/// After parsing, `Diagnostics::throw_if_any()` throws one `ConfigError` listing them all as
/// `file:line:col: key: message`. Library code never calls exit(); the CLI maps ConfigError to
/// exit code 2.
///
/// Overrides (`--set a.b=value`, sweep axes) are applied to the YAML tree before reading, and
/// values that came from an override report their location as `--set a.b=value`.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sim/time.hpp"

namespace YAML {
class Node;
}

namespace moesim::config {

struct Location {
  std::string file;  ///< file name, or "--set key=value" for overrides
  int line = 0;      ///< 1-based; 0 when unknown
  int col = 0;       ///< 1-based; 0 when unknown
  std::string str() const;
};

struct Diagnostic {
  Location loc;
  std::string key;  ///< dotted path, e.g. "cluster.intra_node.bandwidth"
  std::string message;
  std::string str() const;  ///< "file:line:col: key: message"
};

/// One or more configuration problems. what() holds one line per problem.
class ConfigError : public std::runtime_error {
 public:
  explicit ConfigError(std::vector<Diagnostic> diags);
  const std::vector<Diagnostic>& diagnostics() const { return diags_; }

 private:
  std::vector<Diagnostic> diags_;
};

class Diagnostics {
 public:
  void error(Location loc, std::string key, std::string message);
  bool empty() const { return diags_.empty(); }
  std::size_t size() const { return diags_.size(); }
  const std::vector<Diagnostic>& all() const { return diags_; }
  /// Throws ConfigError with everything collected so far (in the order reported), if any.
  void throw_if_any() const;

 private:
  std::vector<Diagnostic> diags_;
};

/// Plain strong types for unit-carrying values read from configs.
struct Bytes {
  double value = 0;
};
struct Bandwidth {
  double bytes_per_s = 0;
};
struct FlopRate {
  double flops = 0;
};

/// Allowed numeric range for a read; violations are reported, not clamped.
struct Range {
  double lo = -1e308;
  double hi = 1e308;
  bool lo_open = false;  ///< true: value must be > lo (e.g. positive)
  static Range any() { return {}; }
  static Range positive() { return {0, 1e308, true}; }
  static Range non_negative() { return {0, 1e308, false}; }
  static Range at_least(double v) { return {v, 1e308, false}; }
  static Range between(double a, double b) { return {a, b, false}; }
  bool contains(double v) const { return (lo_open ? v > lo : v >= lo) && v <= hi; }
  /// What a typed read returns after recording an error (missing required key, wrong type, out
  /// of range): a value inside the range (0 or 1 when
  /// allowed, else the nearest bound), so that checks run after the read never divide by zero
  /// or index out of range before the collected errors are thrown.
  double fallback() const;
  std::string describe() const;
};

class Document;
struct OverrideOrigin;  // where an overridden value came from (reader.cpp)

/// A located view of one YAML value. Cheap to copy; copies share the "keys read" record.
class Node {
 public:
  Node();  // an undefined node
  ~Node();
  Node(const Node&);
  Node& operator=(const Node&);

  bool defined() const;  ///< false for a missing key
  bool is_map() const;
  bool is_sequence() const;
  bool is_scalar() const;
  bool is_null() const;
  const std::string& path() const { return path_; }
  Location location() const;
  Diagnostics& diagnostics() const { return *diags_; }

  /// Marks `key` as known and tells whether it is present.
  bool has(std::string_view key) const;
  /// Child by key (marks it as read). Missing -> undefined Node whose path is still set.
  Node child(std::string_view key) const;
  /// Sequence elements, with paths "a.b[0]", "a.b[1]"... Reports an error if not a sequence.
  std::vector<Node> items() const;
  /// Map entries in document order (for maps keyed by user-chosen names); marks all as read.
  std::vector<std::pair<std::string, Node>> entries() const;

  /// The value as YAML text without reporting anything: a scalar as written, a list or map in
  /// flow style ("[1, 2]", "{a: 1}"), "" when undefined. Labels sweep columns.
  std::string text() const;

  // --- typed reads of this node's own scalar (report into Diagnostics; return a fallback) ---
  std::string as_string() const;
  std::int64_t as_int(Range r = Range::any()) const;
  double as_double(Range r = Range::any()) const;
  bool as_bool() const;
  Bytes as_bytes(Range r = Range::positive()) const;
  Bandwidth as_bandwidth(Range r = Range::positive()) const;
  FlopRate as_flop_rate(Range r = Range::positive()) const;
  sim::SimTime as_time(Range r = Range::non_negative()) const;  ///< Range in picoseconds
  /// One of `choices`; otherwise an error listing them (with a did-you-mean).
  std::string as_choice(const std::vector<std::string>& choices) const;

  // --- keyed reads: required (error if missing) and optional (default if missing) ---
  std::string req_string(std::string_view key) const;
  std::string opt_string(std::string_view key, std::string dflt) const;
  std::int64_t req_int(std::string_view key, Range r = Range::any()) const;
  std::int64_t opt_int(std::string_view key, std::int64_t dflt, Range r = Range::any()) const;
  double req_double(std::string_view key, Range r = Range::any()) const;
  double opt_double(std::string_view key, double dflt, Range r = Range::any()) const;
  bool opt_bool(std::string_view key, bool dflt) const;
  Bytes req_bytes(std::string_view key, Range r = Range::positive()) const;
  std::optional<Bytes> opt_bytes(std::string_view key, Range r = Range::positive()) const;
  Bandwidth req_bandwidth(std::string_view key, Range r = Range::positive()) const;
  std::optional<Bandwidth> opt_bandwidth(std::string_view key, Range r = Range::positive()) const;
  FlopRate req_flop_rate(std::string_view key, Range r = Range::positive()) const;
  std::optional<FlopRate> opt_flop_rate(std::string_view key, Range r = Range::positive()) const;
  /// A frequency in hertz ("1830MHz").
  std::optional<double> opt_frequency(std::string_view key, Range r = Range::positive()) const;
  sim::SimTime req_time(std::string_view key, Range r = Range::non_negative()) const;
  sim::SimTime opt_time(std::string_view key, sim::SimTime dflt, Range r = Range::non_negative()) const;
  std::string req_choice(std::string_view key, const std::vector<std::string>& choices) const;
  std::string opt_choice(std::string_view key, const std::vector<std::string>& choices, std::string dflt) const;

  /// Report a problem located at this node (key = this node's path).
  void error(std::string message) const;
  /// Report a problem about child `key` (located at the child if present, else at this node).
  void error_at(std::string_view key, std::string message) const;

  /// Report every key of this map that was never read as "unknown key" (with a suggestion from
  /// `known` or the keys read). Call once per map after reading it.
  void finish(const std::vector<std::string>& also_known = {}) const;

 private:
  friend class Document;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  Diagnostics* diags_ = nullptr;
};

/// A loaded YAML document plus the overrides applied to it.
class Document {
 public:
  /// Load a file; YAML syntax errors become a ConfigError with file:line:col.
  static Document load_file(const std::string& path);
  static Document load_string(const std::string& text, const std::string& name);
  Document(Document&&) noexcept;
  Document& operator=(Document&&) noexcept;
  ~Document();

  /// Apply "a.b.c=value" (value is parsed as YAML, so "2", "[1,2]", "none", "{a: 1}" work).
  /// Sequences are addressed as "a.b.0.c" or "a.b[0].c". Intermediate maps are created when
  /// missing; unknown keys created this way are reported by the reader like any other.
  /// Malformed assignments throw ConfigError.
  void apply_override(std::string_view assignment);
  /// Set a value from a YAML text at a dotted path (the same mechanism sweeps use).
  void set(std::string_view path, std::string_view yaml_value);
  /// Set a dotted path to a node of another document (a sweep axis value). The node is shared,
  /// not copied, so its file:line:col marks survive: problems found under `path` later are
  /// reported at the value's own location in its file. Use a freshly loaded source document
  /// per target (a later set() below `path` writes into the shared node). Errors in the path
  /// are reported at the value's location.
  /// `path_at`, when given, is where the path itself is written (e.g. the axis in a sweep file):
  /// a key the path creates that the reader does not know is reported there.
  void set(std::string_view path, const Node& value, std::optional<Location> path_at = std::nullopt);

  /// Root node reading into `diags`.
  Node root(Diagnostics& diags) const;
  const std::string& file() const { return file_; }
  /// The document as YAML text (overrides applied), e.g. for writing planner outputs.
  std::string dump() const;
  /// A deep copy (sweeps apply per-run overrides to copies of the base document).
  Document clone() const;

 private:
  Document();
  std::string file_;
  std::unique_ptr<YAML::Node> root_;
  void set_node(std::string_view path, const YAML::Node& value, OverrideOrigin origin, const Location& where);
  std::shared_ptr<std::map<std::string, OverrideOrigin>> overrides_;  // path -> where its value came from
};

/// Closest candidate by edit distance, if close enough to be a plausible typo.
std::optional<std::string> did_you_mean(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace moesim::config
