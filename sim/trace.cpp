#include "sim/trace.hpp"

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include <stdexcept>
#include <utility>

namespace moesim::sim {

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        else
          out += c;
    }
  }
  return out;
}

namespace {
/// fmt::print throws a message without the file's name on a failed write; errors are checked
/// per event and at close() instead (with the name).
template <class... T>
void emit(std::FILE* f, fmt::format_string<T...> format, T&&... args) {
  const std::string text = fmt::format(format, std::forward<T>(args)...);
  std::fwrite(text.data(), 1, text.size(), f);
}
}  // namespace

std::string format_us(SimTime t) {
  const std::int64_t ps = t.ps();
  const std::int64_t a = ps < 0 ? -ps : ps;
  return fmt::format("{}{}.{:06}", ps < 0 ? "-" : "", a / 1'000'000, a % 1'000'000);
}

TraceWriter::TraceWriter(const std::string& path) : out_(std::fopen(path.c_str(), "w")), owns_(true), path_(path) {
  if (out_ == nullptr) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  std::fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", out_);
}

TraceWriter::TraceWriter(std::FILE* out) : out_(out) {
  std::fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", out_);
}

TraceWriter::~TraceWriter() {
  try {
    close();
  } catch (...) {  // destructors must not throw; close() reports errors when called explicitly
  }
}

void TraceWriter::close() {
  if (closed_) return;
  closed_ = true;
  std::fputs("\n]}\n", out_);
  // Every write is checked here, once: the stream's error flag is sticky, and the flush and the
  // close are where a full disk shows up for the last buffered bytes.
  errno = 0;
  bool ok = std::fflush(out_) == 0 && std::ferror(out_) == 0;
  int err = errno;
  if (owns_) {
    errno = 0;
    if (std::fclose(out_) != 0 && ok) {
      ok = false;
      err = errno;
    }
  }
  out_ = nullptr;
  if (!ok)
    throw std::runtime_error(fmt::format("cannot write {}: {}", path_.empty() ? std::string("the trace") : path_,
                                         err != 0 ? std::strerror(err) : "write error"));
}

void TraceWriter::begin_event() {
  // A write error (a full disk) ends the run at once rather than after simulating the rest.
  if ((events_ & 255) == 0 && std::ferror(out_) != 0)
    throw std::runtime_error(fmt::format("cannot write {}: {}", path_.empty() ? std::string("the trace") : path_,
                                         errno != 0 ? std::strerror(errno) : "write error"));
  if (events_++ > 0) std::fputs(",\n", out_);
}

void TraceWriter::write_ts(SimTime t) { std::fputs(format_us(t).c_str(), out_); }

void TraceWriter::process(int pid, std::string_view name) {
  begin_event();
  emit(out_, R"({{"name":"process_name","ph":"M","pid":{},"args":{{"name":"{}"}}}})", pid, json_escape(name));
  begin_event();
  emit(out_, R"({{"name":"process_sort_index","ph":"M","pid":{},"args":{{"sort_index":{}}}}})", pid, pid);
}

void TraceWriter::track(int pid, int track, std::string_view name) { tracks_[{pid, track}].name = std::string(name); }

int TraceWriter::tid(int pid, int track, int lane) {
  TrackInfo& info = tracks_[{pid, track}];
  const auto l = static_cast<std::size_t>(lane);
  if (info.declared.size() <= l) info.declared.resize(l + 1, false);
  const int id = track * 1000 + lane;
  if (!info.declared[l]) {
    info.declared[l] = true;
    const std::string name = lane == 0 ? info.name : fmt::format("{} #{}", info.name, lane);
    begin_event();
    emit(out_, R"({{"name":"thread_name","ph":"M","pid":{},"tid":{},"args":{{"name":"{}"}}}})", pid, id,
         json_escape(name));
    begin_event();
    emit(out_, R"({{"name":"thread_sort_index","ph":"M","pid":{},"tid":{},"args":{{"sort_index":{}}}}})", pid, id, id);
  }
  return id;
}

int TraceWriter::open_lane(int pid, int track) {
  TrackInfo& info = tracks_[{pid, track}];
  for (std::size_t i = 0; i < info.busy.size(); ++i) {
    if (!info.busy[i]) {
      info.busy[i] = true;
      return static_cast<int>(i);
    }
  }
  info.busy.push_back(true);
  return static_cast<int>(info.busy.size() - 1);
}

void TraceWriter::close_lane(int pid, int track, int lane) {
  TrackInfo& info = tracks_[{pid, track}];
  if (lane >= 0 && static_cast<std::size_t>(lane) < info.busy.size()) info.busy[static_cast<std::size_t>(lane)] = false;
}

void TraceWriter::slice(int pid, int track, int lane, std::string_view name, std::string_view category, SimTime start,
                        SimTime end, const std::vector<TraceArg>& args) {
  const int t = tid(pid, track, lane);
  begin_event();
  emit(out_, R"({{"name":"{}","cat":"{}","ph":"X","pid":{},"tid":{},"ts":)", json_escape(name), json_escape(category),
       pid, t);
  write_ts(start);
  std::fputs(",\"dur\":", out_);
  write_ts(end - start);
  if (!args.empty()) {
    std::fputs(",\"args\":{", out_);
    bool first = true;
    for (const auto& a : args) {
      if (!first) std::fputc(',', out_);
      first = false;
      if (a.is_number)
        emit(out_, R"("{}":{})", json_escape(a.key), a.num);
      else
        emit(out_, R"("{}":"{}")", json_escape(a.key), json_escape(a.str));
    }
    std::fputc('}', out_);
  }
  std::fputc('}', out_);
}

void TraceWriter::counter(int pid, std::string_view name, SimTime t, std::string_view series, double value) {
  begin_event();
  emit(out_, R"({{"name":"{}","ph":"C","pid":{},"ts":)", json_escape(name), pid);
  write_ts(t);
  emit(out_, R"(,"args":{{"{}":{}}}}})", json_escape(series), value);
}

void TraceWriter::flow_begin(int pid, int track, int lane, std::uint64_t id, std::string_view name, SimTime t) {
  const int th = tid(pid, track, lane);
  begin_event();
  emit(out_, R"({{"name":"{}","cat":"flow","ph":"s","id":{},"pid":{},"tid":{},"ts":)", json_escape(name), id, pid, th);
  write_ts(t);
  std::fputc('}', out_);
}

void TraceWriter::flow_end(int pid, int track, int lane, std::uint64_t id, std::string_view name, SimTime t) {
  const int th = tid(pid, track, lane);
  begin_event();
  emit(out_, R"({{"name":"{}","cat":"flow","ph":"f","bp":"e","id":{},"pid":{},"tid":{},"ts":)", json_escape(name), id,
       pid, th);
  write_ts(t);
  std::fputc('}', out_);
}

}  // namespace moesim::sim
