#include "explore/results.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "config/input_file.hpp"
#include "config/reader.hpp"
#include "engine/run.hpp"
#include "explore/csv.hpp"
#include "sim/output_file.hpp"

namespace moesim::explore {

namespace {

namespace fs = std::filesystem;
using config::ConfigError;
using config::Diagnostic;
using config::Location;

[[noreturn]] void fail(const std::string& file, int line, std::string key, std::string message) {
  throw ConfigError({Diagnostic{Location{file, line, line > 0 ? 1 : 0}, std::move(key), std::move(message)}});
}

/// A results directory's own file, if it exists (through the capped regular-file reader: a FIFO
/// or a device put there is refused rather than blocking or reading without end).
bool read_text(const std::string& path, std::string& out) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return false;
  out = config::read_input_file(path, std::uint64_t{16} << 30, "");
  return true;
}

/// Checks a complete row's first fields against the sweep; "" when it belongs, else why not.
std::string row_mismatch(const std::vector<std::string>& f, const Sweep& sw, std::size_t expect_index,
                         std::size_t columns) {
  if (f.size() != columns) return fmt::format("has {} fields, the header has {}", f.size(), columns);
  if (f[0] != std::to_string(expect_index)) return fmt::format("run_index is '{}', expected {}", f[0], expect_index);
  if (expect_index >= sw.runs.size())
    return fmt::format("run {} does not exist (the sweep has {} runs)", f[0], sw.runs.size());
  if (f[1] != std::to_string(sw.runs[expect_index].seed))
    return fmt::format("seed is '{}', this sweep's run {} has seed {}", f[1], expect_index, sw.runs[expect_index].seed);
  if (f[2] != "ok" && f[2] != "error") return fmt::format("status is '{}', expected ok or error", f[2]);
  return {};
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

bool row_failed(const std::string& row) {
  const std::size_t a = row.find(',');
  const std::size_t b = a == std::string::npos ? a : row.find(',', a + 1);
  return b != std::string::npos && row.compare(b + 1, 6, "error,") == 0;
}

ExistingRows scan_results(const std::string& text, const Sweep& sw, const std::string& file) {
  ExistingRows out;
  const std::string header = sw.header();
  const std::size_t nl = text.find('\n');
  if (nl == std::string::npos) return out;  // not even a complete header: start over
  if (text.compare(0, nl, header) != 0)
    fail(file, 1, "", "the header differs from this sweep's columns (written by a different sweep or version)");
  const std::size_t columns = csv_split(header).size();
  std::size_t pos = nl + 1;
  out.keep_bytes = pos;
  int line = 2;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;  // torn final line from a kill: redo that run
    const std::string row = text.substr(pos, end - pos);
    const std::string why = row_mismatch(csv_split(row), sw, out.rows, columns);
    if (!why.empty()) fail(file, line, "run_index", "row does not belong to this sweep: " + why);
    if (row_failed(row)) ++out.failed;
    ++out.rows;
    pos = end + 1;
    out.keep_bytes = pos;
    ++line;
  }
  return out;
}

std::map<std::size_t, std::string> scan_journal(const std::string& text, const Sweep& sw) {
  std::map<std::size_t, std::string> out;
  const std::size_t columns = csv_split(sw.header()).size();
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;
    std::string row = text.substr(pos, end - pos);
    pos = end + 1;
    const std::vector<std::string> f = csv_split(row);
    std::size_t index = 0;
    try {
      index = std::stoul(f[0]);
    } catch (const std::exception&) {
      continue;
    }
    if (row_mismatch(f, sw, index, columns).empty()) out[index] = std::move(row);
  }
  return out;
}

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::ordered_json manifest_json(const Sweep& sw, const ExecutionInfo& info) {
  using Json = nlohmann::ordered_json;
  Json axes = Json::array();
  for (const auto& a : sw.axes) axes.push_back({{"name", a.name}, {"paths", a.paths}, {"values", a.labels}});
  Json j;
  j["moesim_version"] = engine::version();
  j["sweep"] = {{"name", sw.name},           {"file", sw.file},
                {"hash", sw.hash_hex()},     {"base_scenario", sw.base},
                {"overrides", sw.overrides}, {"axes", std::move(axes)},
                {"repeats", sw.repeats},     {"seeds", sw.seed_mode == SeedMode::kPerRun ? "per_run" : "per_repeat"},
                {"base_seed", sw.base_seed}, {"points", sw.points.size()},
                {"runs", sw.runs.size()},    {"columns", csv_split(sw.header())}};
  j["execution"] = {{"host", host_name()},
                    {"threads", info.threads},
                    {"ranks", info.ranks},
                    {"started_at", info.started_at},
                    {"finished_at", info.finished_at},
                    {"wall_s", info.wall_s},
                    {"resumed_rows", info.resumed_rows}};
  j["results"] = {{"file", "results.csv"}, {"ok", info.ok}, {"failed", info.failed}, {"complete", info.complete}};
  return j;
}

ResultsWriter::ResultsWriter(const Sweep& sweep, const Options& opts) : sweep_(sweep), dir_(opts.dir) {
  std::error_code ec;
  const std::string csv = results_path();
  const std::string journal = (fs::path(dir_) / "journal.csv").string();
  const std::string manifest = manifest_path();
  // One sweep at a time per directory: the lock is taken before anything is read or written
  // (so a resume never reads rows another sweep is still appending) and held until exit.
  if (fs::is_directory(dir_, ec)) lock_directory();
  bool have_csv = fs::exists(csv, ec);
  const bool have_manifest = fs::exists(manifest, ec);
  bool fresh = true;
  std::string csv_text;
  std::map<std::size_t, std::string> journaled;
  ExistingRows existing;

  // A results.csv with no row and no manifest.json (a sweep that failed before its first row,
  // e.g. on a full disk while writing the header or the manifest) holds nothing: it can be
  // started over, by --resume as well.
  if (have_csv && !have_manifest && (opts.resume || !opts.force)) {
    std::string head;
    if (read_text(csv, head)) {
      const std::size_t nl = head.find('\n');
      if (nl == std::string::npos || nl + 1 == head.size()) have_csv = false;
    }
  }

  if (opts.resume && !opts.force && (have_csv || have_manifest)) {
    if (!have_manifest)
      fail(manifest, 0, "", "missing: " + dir_ + " has a results.csv but no manifest.json, so it cannot be resumed");
    std::string mtext;
    if (!read_text(manifest, mtext)) fail(manifest, 0, "", "cannot read the file");
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(mtext);
    } catch (const nlohmann::json::exception& e) {
      fail(manifest, 0, "", std::string("not valid JSON: ") + e.what());
    }
    const auto* h =
        m.contains("sweep") && m["sweep"].is_object() && m["sweep"].contains("hash") ? &m["sweep"]["hash"] : nullptr;
    if (h == nullptr || !h->is_string()) fail(manifest, 0, "sweep.hash", "missing: not a moesim sweep manifest");
    if (h->get<std::string>() != sweep.hash_hex()) {
      const std::string other_name = m["sweep"].value("name", std::string("?"));
      const std::string other_file = m["sweep"].value("file", std::string("?"));
      fail(manifest, 0, "sweep.hash",
           fmt::format("{} holds results of a different sweep ('{}' from {}, hash {}); this sweep ('{}' from {}) has "
                       "hash {}. Use another -o DIR, or --force to start over",
                       dir_, other_name, other_file, h->get<std::string>(), sweep.name, sweep.file, sweep.hash_hex()));
    }
    if (have_csv) {
      if (!read_text(csv, csv_text)) fail(csv, 0, "", "cannot read the file");
      existing = scan_results(csv_text, sweep, csv);
      fresh = existing.keep_bytes == 0;
    }
    std::string jtext;
    if (read_text(journal, jtext)) journaled = scan_journal(jtext, sweep);
  } else if (!opts.resume && !opts.force && have_csv) {
    fail(csv, 0, "", "already exists; use --resume to continue this sweep, --force to start over, or another -o DIR");
  }

  fs::create_directories(dir_, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot create {}: {}", dir_, ec.message()));
  if (lock_.fd < 0) lock_directory();
  if (fresh) {
    csv_ = std::make_unique<sim::OutputFile>(csv);
    csv_->write(sweep.header() + "\n");
  } else {
    fs::resize_file(csv, existing.keep_bytes, ec);  // cut a torn final line
    if (ec) throw std::runtime_error(fmt::format("cannot truncate {}: {}", csv, ec.message()));
    csv_ = std::make_unique<sim::OutputFile>(csv, sim::OutputFile::Mode::kAppend);
  }
  csv_->flush();
  next_ = existing.rows;
  failed_ = existing.failed;
  received_ = existing.rows;
  resumed_ = existing.rows;

  // The journal is rewritten with the finished rows it still needs (a torn line is dropped).
  journal_ = std::make_unique<sim::OutputFile>(journal);
  for (auto& [i, row] : journaled) {
    if (i < next_) continue;
    journal_->write(row + "\n");
    if (row_failed(row)) ++failed_;
    ++received_;
    ++resumed_;
    pending_.emplace(i, std::move(row));
  }
  journal_->flush();
  for (std::size_t i = next_; i < sweep.runs.size(); ++i)
    if (pending_.count(i) == 0) todo_.push_back(i);
  flush_ready();
}

ResultsWriter::~ResultsWriter() {
  csv_.reset();
  journal_.reset();
}

ResultsWriter::LockFd::~LockFd() {
  if (fd >= 0) ::close(fd);  // releases the directory's lock
}

void ResultsWriter::lock_directory() {
  const std::string path = (fs::path(dir_) / "sweep.lock").string();
  lock_.fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_.fd < 0) throw std::runtime_error(fmt::format("cannot create {}: {}", path, std::strerror(errno)));
  if (::flock(lock_.fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder;
    char buf[64] = {};
    if (::pread(lock_.fd, buf, sizeof buf - 1, 0) > 0) holder = buf;
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    ::close(lock_.fd);
    lock_.fd = -1;
    if (err != EWOULDBLOCK) throw std::runtime_error(fmt::format("cannot lock {}: {}", path, std::strerror(err)));
    fail(path, 0, "",
         fmt::format("{} is in use by another moesim sweep{}; wait for it to finish, or use another -o DIR", dir_,
                     holder.empty() ? std::string() : " (" + holder + ")"));
  }
  // Who holds it, for the message another sweep prints (the lock itself is the flock, which the
  // kernel releases when this process exits, however it exits).
  const std::string me = fmt::format("pid {}", ::getpid());
  if (::ftruncate(lock_.fd, 0) != 0 || ::pwrite(lock_.fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
}

std::string ResultsWriter::results_path() const { return (fs::path(dir_) / "results.csv").string(); }
std::string ResultsWriter::manifest_path() const { return (fs::path(dir_) / "manifest.json").string(); }

void ResultsWriter::journal(std::size_t run_index, const std::string& row) {
  (void)run_index;
  const std::string line = row + "\n";
  std::lock_guard<std::mutex> lock(journal_mu_);
  journal_->write(line);
  journal_->flush();
}

void ResultsWriter::put(std::size_t run_index, std::string row) {
  if (run_index < next_ || pending_.count(run_index) != 0) return;  // already known (journal)
  if (row_failed(row)) ++failed_;
  ++received_;
  pending_.emplace(run_index, std::move(row));
  flush_ready();
}

void ResultsWriter::flush_ready() {
  bool wrote = false;
  for (auto it = pending_.find(next_); it != pending_.end(); it = pending_.find(next_)) {
    csv_->write(it->second + "\n");
    pending_.erase(it);
    ++next_;
    wrote = true;
  }
  if (wrote) csv_->flush();
}

void ResultsWriter::write_manifest(const ExecutionInfo& info) const {
  sim::write_file_atomic(manifest_path(), manifest_json(sweep_, info).dump(2) + "\n");
}

void ResultsWriter::finish() {
  if (next_ != sweep_.runs.size())
    throw std::logic_error(fmt::format("sweep finished with {} of {} rows written", next_, sweep_.runs.size()));
  csv_->close();  // results.csv is complete and on disk before the journal goes
  journal_->close();
  std::error_code ec;
  fs::remove(fs::path(dir_) / "journal.csv", ec);
}

}  // namespace moesim::explore
