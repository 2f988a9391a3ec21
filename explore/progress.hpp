#pragma once
/// \file
/// Progress of a long sweep on stderr: one redrawn line on a terminal, otherwise one line per
/// 10% (so logs stay short). Disabled by --quiet; under MPI only rank 0 has one.

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace moesim::explore {

class Progress {
 public:
  /// `already`: runs done before this execution (resumed); they count as done.
  Progress(std::string label, std::size_t total, std::size_t already, bool enabled, std::FILE* out = stderr);
  /// `done` runs finished so far (including `already`), `failed` of them failed.
  void update(std::size_t done, std::size_t failed);
  /// Ends the redrawn line (if any).
  void finish();
  /// The line that update() prints (exposed for tests).
  std::string line(std::size_t done, std::size_t failed, double elapsed_s) const;

 private:
  std::string label_;
  std::size_t total_;
  std::size_t already_;
  bool enabled_;
  bool tty_;
  std::FILE* out_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
  bool drawn_ = false;
};

}  // namespace moesim::explore
