#pragma once
/// \file
/// Streaming Chrome Trace Event writer (opens in Perfetto and chrome://tracing).
///
/// The file is written as events happen, never built in memory, so a 2,048-GPU run does not
/// hold its trace. Timestamps are printed as exact decimals of microseconds from integer
/// picoseconds ("12.345678"), so the trace agrees with the simulator to the picosecond.
///
/// Tracks: a process per `pid` (e.g. one per GPU) and a named track per (pid, track id). Slices
/// on one Chrome thread must nest, but transfers on one engine overlap; `open_lane` gives each
/// concurrent activity its own lane (a separate Chrome thread named "<track> #<lane>"), chosen
/// as the lowest free lane, so lanes are deterministic and slices on one lane never overlap.
///
/// Flow arrows (dispatch -> expert compute -> combine) are `flow_begin`/`flow_end` pairs with
/// a caller-chosen id; each must be emitted at a time covered by a slice on the same lane.

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sim/time.hpp"

namespace moesim::sim {

/// One `key: value` pair of a slice's args; values are numbers or strings.
struct TraceArg {
  std::string_view key;
  std::string str;  ///< used when is_number is false
  double num = 0;
  bool is_number = true;
  TraceArg(std::string_view k, double v) : key(k), num(v) {}
  TraceArg(std::string_view k, std::int64_t v) : key(k), num(static_cast<double>(v)) {}
  TraceArg(std::string_view k, int v) : key(k), num(v) {}
  TraceArg(std::string_view k, std::string v) : key(k), str(std::move(v)), is_number(false) {}
  TraceArg(std::string_view k, const char* v) : key(k), str(v), is_number(false) {}
};

class TraceWriter {
 public:
  /// Opens `path` for writing (throws std::runtime_error if it cannot).
  explicit TraceWriter(const std::string& path);
  /// Writes to an already open stream (not closed by the writer), e.g. for tests.
  explicit TraceWriter(std::FILE* out);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  /// Names a process (e.g. "GPU 5 (node 0)"); sort order follows pid.
  void process(int pid, std::string_view name);
  /// Declares track `track` of `pid` with a display name and sort index.
  void track(int pid, int track, std::string_view name);

  /// Lowest free lane of (pid, track) at this moment; call close_lane when the activity ends.
  int open_lane(int pid, int track);
  void close_lane(int pid, int track, int lane);

  /// A complete slice ("ph":"X") on (pid, track, lane).
  void slice(int pid, int track, int lane, std::string_view name, std::string_view category, SimTime start, SimTime end,
             const std::vector<TraceArg>& args = {});
  /// A counter sample ("ph":"C"), e.g. HBM bytes in use.
  void counter(int pid, std::string_view name, SimTime t, std::string_view series, double value);
  /// Flow arrow endpoints ("ph":"s" and "ph":"f" with binding to the enclosing slice).
  void flow_begin(int pid, int track, int lane, std::uint64_t id, std::string_view name, SimTime t);
  void flow_end(int pid, int track, int lane, std::uint64_t id, std::string_view name, SimTime t);

  /// Finishes the JSON document (also done by the destructor).
  void close();
  std::uint64_t events_written() const { return events_; }

 private:
  int tid(int pid, int track, int lane);
  void begin_event();
  void write_ts(SimTime t);

  std::FILE* out_ = nullptr;
  bool owns_ = false;
  bool closed_ = false;
  std::string path_;  ///< for error messages ("" for a caller's stream)
  std::uint64_t events_ = 0;
  struct TrackInfo {
    std::string name;
    std::vector<bool> busy;      // per lane
    std::vector<bool> declared;  // per lane: thread_name emitted
  };
  std::map<std::pair<int, int>, TrackInfo> tracks_;
};

/// JSON string escaping (quotes, backslash, control characters).
std::string json_escape(std::string_view s);
/// Exact microseconds from picoseconds: "1234.567890".
std::string format_us(SimTime t);

}  // namespace moesim::sim
