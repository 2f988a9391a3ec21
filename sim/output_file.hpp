#pragma once
/// \file
/// Checked output files. Every byte moesim writes to a file goes through `OutputFile` (or
/// `write_file`), which checks each write, the flush and the close: a full disk, a quota or an
/// I/O error is a `std::runtime_error` ("cannot write PATH: No space left on device"), which
/// the CLI turns into exit code 1, never a silent truncation with exit 0. What reached the file
/// before the error is a prefix of the intended content (writes are sequential, never
/// reordered), so line-oriented outputs such as a sweep's results.csv can be resumed. Small
/// whole-file outputs (reports, plans, profiles, manifests) use write_file_atomic: all or nothing.

#include <cstdio>
#include <string>
#include <string_view>

namespace moesim::sim {

class OutputFile {
 public:
  enum class Mode { kTruncate, kAppend };
  /// Opens (creates) `path`; throws std::runtime_error when it cannot.
  explicit OutputFile(std::string path, Mode mode = Mode::kTruncate);
  /// Closes without checking (an unchecked close only happens on an error path: call close()).
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(std::string_view bytes);  ///< throws on a short or failed write
  void flush();                        ///< throws when the buffered bytes cannot be written
  void close();                        ///< flush + close, both checked; idempotent
  std::FILE* stream() const { return f_; }
  const std::string& path() const { return path_; }
  /// Throws the "cannot write PATH: reason" error for this file (errno at the call).
  [[noreturn]] void fail() const;

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

/// Writes `content` to `path` (created or truncated), checking every step.
void write_file(const std::string& path, std::string_view content);

/// Like write_file, but all or nothing for a regular file: the content goes to PATH.tmp-PID in
/// the same directory, which is renamed over PATH only once it is complete, so a kill or a full
/// disk leaves PATH as it was (absent or the previous complete version). A PATH that exists and
/// is not a regular file (/dev/stdout, a FIFO, /dev/full) is written directly.
void write_file_atomic(const std::string& path, std::string_view content);

/// Flushes stdout and reports whether everything written to it arrived ("" when it did, else
/// the reason, e.g. "No space left on device" for `moesim describe gpus > /dev/full`).
std::string stdout_problem();

}  // namespace moesim::sim
