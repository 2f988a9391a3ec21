#include "sim/output_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace moesim::sim {

namespace {
std::string reason(int err) { return err != 0 ? std::strerror(err) : std::string("write error"); }
}  // namespace

OutputFile::OutputFile(std::string path, Mode mode) : path_(std::move(path)) {
  errno = 0;
  f_ = std::fopen(path_.c_str(), mode == Mode::kAppend ? "ab" : "wb");
  if (f_ == nullptr) fail();
}

OutputFile::~OutputFile() {
  if (f_ != nullptr) std::fclose(f_);
}

void OutputFile::fail() const { throw std::runtime_error("cannot write " + path_ + ": " + reason(errno)); }

void OutputFile::write(std::string_view bytes) {
  if (f_ == nullptr) throw std::logic_error("OutputFile::write after close: " + path_);
  if (bytes.empty()) return;
  errno = 0;
  if (std::fwrite(bytes.data(), 1, bytes.size(), f_) != bytes.size()) fail();
}

void OutputFile::flush() {
  if (f_ == nullptr) return;
  errno = 0;
  if (std::fflush(f_) != 0 || std::ferror(f_) != 0) fail();
}

void OutputFile::close() {
  if (f_ == nullptr) return;
  errno = 0;
  const bool flushed = std::fflush(f_) == 0 && std::ferror(f_) == 0;
  const int flush_errno = errno;
  std::FILE* f = f_;
  f_ = nullptr;
  errno = 0;
  const bool closed = std::fclose(f) == 0;
  if (!flushed) errno = flush_errno;
  if (!flushed || !closed) fail();
}

void write_file(const std::string& path, std::string_view content) {
  OutputFile f(path);
  f.write(content);
  f.close();
}

void write_file_atomic(const std::string& path, std::string_view content) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) return write_file(path, content);
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  try {
    write_file(tmp, content);
  } catch (const std::runtime_error& e) {
    std::remove(tmp.c_str());
    std::string msg = e.what();  // "cannot write TMP: reason": name the file the user asked for
    if (const auto at = msg.find(tmp); at != std::string::npos) msg.replace(at, tmp.size(), path);
    throw std::runtime_error(msg);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + ": " + reason(err));
  }
}

std::string stdout_problem() {
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) return reason(errno);
  return {};
}

}  // namespace moesim::sim
