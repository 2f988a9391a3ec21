#include "config/input_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "config/reader.hpp"

namespace moesim::config {

namespace {

std::string size_text(std::uint64_t b) {
  if (b >= (std::uint64_t{1} << 30) && b % (std::uint64_t{1} << 30) == 0) return fmt::format("{} GiB", b >> 30);
  if (b >= (std::uint64_t{1} << 20) && b % (std::uint64_t{1} << 20) == 0) return fmt::format("{} MiB", b >> 20);
  return fmt::format("{} bytes", b);
}

std::string kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

/// "" or the problem with an open descriptor's file.
std::string stat_problem(const struct stat& st, std::uint64_t max_bytes) {
  if (!S_ISREG(st.st_mode)) return fmt::format("is {}, not a regular file", kind_of(st.st_mode));
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes)
    return fmt::format("is {} bytes, more than the {} an input file of this kind may have",
                       static_cast<std::uint64_t>(st.st_size), size_text(max_bytes));
  return {};
}

/// Closes a descriptor on every path out of read_input_file.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

[[noreturn]] void fail(const std::string& path, const std::string& key, std::string message) {
  throw ConfigError({Diagnostic{Location{path, 0, 0}, key, std::move(message)}});
}

}  // namespace

std::string input_file_problem(const std::string& path, std::uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return errno == ENOENT ? std::string("file not found") : fmt::format("cannot open file: {}", std::strerror(errno));
  if (auto p = stat_problem(st, max_bytes); !p.empty()) return p;
  if (::access(path.c_str(), R_OK) != 0) return fmt::format("cannot open file: {}", std::strerror(errno));
  return {};
}

std::string read_input_file(const std::string& path, std::uint64_t max_bytes, std::string_view what,
                            const std::string& key) {
  const auto role = [&](const std::string& msg) { return what.empty() ? msg : fmt::format("{} {}", what, msg); };
  Fd f;
  // O_NONBLOCK: opening a FIFO without a writer returns at once (then fstat refuses it).
  f.fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (f.fd < 0) {
    if (errno == ENOENT) fail(path, key, role("file not found"));
    fail(path, key, role(fmt::format("cannot open file: {}", std::strerror(errno))));
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) fail(path, key, role(fmt::format("cannot read file: {}", std::strerror(errno))));
  if (auto p = stat_problem(st, max_bytes); !p.empty()) fail(path, key, role(p));
  // A regular file: clear O_NONBLOCK (it has no effect on regular files, but be explicit).
  const int flags = ::fcntl(f.fd, F_GETFL);
  if (flags >= 0) ::fcntl(f.fd, F_SETFL, flags & ~O_NONBLOCK);
  std::string out;
  out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, key, role(fmt::format("cannot read file: {}", std::strerror(errno))));
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_bytes)  // it grew while being read
      fail(path, key,
           role(fmt::format("is more than the {} an input file of this kind may have", size_text(max_bytes))));
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace moesim::config
