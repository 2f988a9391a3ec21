#include "explore/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

namespace moesim::explore {

Progress::Progress(std::string label, std::size_t total, std::size_t already, bool enabled, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      already_(already),
      enabled_(enabled),
      tty_(isatty(fileno(out)) != 0),
      out_(out),
      start_(std::chrono::steady_clock::now()) {}

std::string Progress::line(std::size_t done, std::size_t failed, double elapsed_s) const {
  const double pct = total_ == 0 ? 100.0 : 100.0 * static_cast<double>(done) / static_cast<double>(total_);
  std::string s = fmt::format("{}: {}/{} runs ({:.0f}%)", label_, done, total_, pct);
  if (failed > 0) s += fmt::format(", {} failed", failed);
  s += fmt::format(", {:.1f} s", elapsed_s);
  const std::size_t fresh = done - std::min(done, already_);
  if (fresh > 0 && done < total_) {
    const double eta = elapsed_s / static_cast<double>(fresh) * static_cast<double>(total_ - done);
    s += fmt::format(", about {:.0f} s left", eta);
  }
  return s;
}

void Progress::update(std::size_t done, std::size_t failed) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (tty_) {
    // Redraw at most ~10 times a second, and always for the last run.
    if (drawn_ && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    fmt::print(out_, "\r\033[K{}", line(done, failed, elapsed));
    std::fflush(out_);
    last_draw_ = now;
    drawn_ = true;
    return;
  }
  const int decile = total_ == 0 ? 10 : static_cast<int>(10 * done / total_);
  if (decile <= last_decile_) return;
  last_decile_ = decile;
  fmt::print(out_, "{}\n", line(done, failed, elapsed));
  std::fflush(out_);
}

void Progress::finish() {
  if (enabled_ && tty_ && drawn_) {
    fmt::print(out_, "\n");
    std::fflush(out_);
  }
  drawn_ = false;
}

}  // namespace moesim::explore
