#pragma once
/// \file
/// A sweep's results directory: results.csv (rows in run_index order, appended and flushed as
/// they become ready, so a killed sweep leaves a valid prefix), journal.csv (every finished row
/// as soon as it finishes, in any order, so that `--resume` redoes nothing that finished), and
/// manifest.json (the sweep's identity and the only place for host and wall-clock facts).
/// sweep.lock is flock()ed by the sweep writing the directory: a second sweep on the same
/// directory (resumed or forced) is refused with exit 2 while the first runs; the kernel drops
/// the lock when the first exits, even by SIGKILL.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "explore/sweep.hpp"
#include "sim/output_file.hpp"

namespace moesim::explore {

/// What an existing results.csv holds for this sweep.
struct ExistingRows {
  std::size_t rows = 0;        ///< complete rows 0..rows-1 that belong to this sweep
  std::size_t keep_bytes = 0;  ///< bytes to keep (header + those rows); a torn last line is cut
  std::size_t failed = 0;      ///< of those rows, how many have status=error
};

/// Checks `text` (a results.csv) against the sweep: the header must match and rows must be
/// 0, 1, 2... with this sweep's seeds. A final line without its newline (a kill mid-write) is
/// not counted. Throws config::ConfigError naming `file` and the line for anything else.
ExistingRows scan_results(const std::string& text, const Sweep& sweep, const std::string& file);

/// Finished rows of a journal: run_index -> row, for complete lines whose seed matches.
std::map<std::size_t, std::string> scan_journal(const std::string& text, const Sweep& sweep);

/// The status field of a row ("ok" or "error").
bool row_failed(const std::string& row);

/// Facts about one execution of a sweep, for manifest.json only.
struct ExecutionInfo {
  int threads = 1;
  int ranks = 1;
  std::string started_at;  ///< UTC, ISO 8601
  std::string finished_at;
  double wall_s = 0;
  std::size_t resumed_rows = 0;
  std::size_t ok = 0;
  std::size_t failed = 0;
  bool complete = false;
};

/// manifest.json's content.
nlohmann::ordered_json manifest_json(const Sweep& sweep, const ExecutionInfo& info);

/// The current UTC time as ISO 8601 ("2026-11-23T10:04:05Z").
std::string utc_now();

class ResultsWriter {
 public:
  struct Options {
    std::string dir;
    bool resume = false;  ///< continue the sweep in dir (its manifest must match)
    bool force = false;   ///< start over even if dir holds results
  };

  /// Prepares the directory: creates it, or on resume checks manifest.json's hash and reads
  /// the rows already there (results.csv prefix and journal). Without resume or force, an
  /// existing results.csv is an error. Throws config::ConfigError (exit 2) for all of these.
  ResultsWriter(const Sweep& sweep, const Options& opts);
  ~ResultsWriter();
  ResultsWriter(const ResultsWriter&) = delete;
  ResultsWriter& operator=(const ResultsWriter&) = delete;

  /// Run indices that still have to run, in increasing order.
  const std::vector<std::size_t>& todo() const { return todo_; }
  /// Rows taken over from a previous execution (results.csv prefix + journal).
  std::size_t resumed() const { return resumed_; }

  /// Records a finished row in the journal (thread-safe; call as soon as a run finishes).
  void journal(std::size_t run_index, const std::string& row);
  /// Hands a finished row to the writer (single thread): it is appended to results.csv as
  /// soon as every lower run index has been written.
  void put(std::size_t run_index, std::string row);

  std::size_t written() const { return next_; }
  std::size_t received() const { return received_; }
  std::size_t failed() const { return failed_; }
  std::string results_path() const;
  std::string manifest_path() const;
  /// Writes manifest.json (atomically: temporary file + rename).
  void write_manifest(const ExecutionInfo& info) const;
  /// After the last put: checks every row was written and removes the journal.
  void finish();

 private:
  void flush_ready();

  const Sweep& sweep_;
  std::string dir_;
  std::vector<std::size_t> todo_;
  std::map<std::size_t, std::string> pending_;  // finished, waiting for lower indices
  std::size_t next_ = 0;                        // next run index to append to results.csv
  std::size_t received_ = 0;                    // rows known (written or pending)
  std::size_t failed_ = 0;
  std::size_t resumed_ = 0;
  /// Takes dir/sweep.lock (flock, non-blocking); a held lock is a ConfigError (exit 2).
  void lock_directory();

  /// The lock's descriptor, closed (lock released) on every way out, including a constructor
  /// that throws after locking.
  struct LockFd {
    int fd = -1;
    LockFd() = default;
    LockFd(const LockFd&) = delete;
    LockFd& operator=(const LockFd&) = delete;
    ~LockFd();
  };

  LockFd lock_;
  std::unique_ptr<sim::OutputFile> csv_;
  std::unique_ptr<sim::OutputFile> journal_;
  std::mutex journal_mu_;
};

}  // namespace moesim::explore
