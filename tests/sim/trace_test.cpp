#include <catch2/catch.hpp>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "sim/trace.hpp"

using namespace moesim::sim;
using namespace moesim::sim::literals;

namespace {
std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string s;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}
}  // namespace

TEST_CASE("trace output is valid Chrome Trace JSON with exact timestamps", "[trace]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    TraceWriter w(f);
    w.process(0, "GPU 0 (node 0)");
    w.track(0, 1, "NVLink comm");
    const int a = w.open_lane(0, 1);
    const int b = w.open_lane(0, 1);  // overlapping: second lane
    REQUIRE(a == 0);
    REQUIRE(b == 1);
    w.slice(0, 1, b, "dispatch \"x\"", "dispatch", 1_us, SimTime::from_ps(2'345'678),
            {{"bytes", 1024}, {"layer", "3"}});
    w.close_lane(0, 1, b);
    w.flow_begin(0, 1, a, 7, "tok", 2_us);
    w.slice(0, 1, a, "combine", "combine", 1500_ns, 3_us);
    w.close_lane(0, 1, a);
    REQUIRE(w.open_lane(0, 1) == 0);  // lowest free lane is reused
    w.counter(0, "HBM", 3_us, "bytes", 1.5e9);
    w.close();
  }
  const auto j = nlohmann::json::parse(read_all(f));
  std::fclose(f);
  const auto& ev = j.at("traceEvents");
  int slices = 0;
  bool saw_exact = false;
  bool saw_lane_name = false;
  for (const auto& e : ev) {
    if (e.at("ph") == "X") {
      ++slices;
      REQUIRE(e.contains("ts"));
      REQUIRE(e.contains("dur"));
      if (e.at("name") == "dispatch \"x\"") {
        REQUIRE(e.at("ts").get<double>() == Approx(1.0));
        REQUIRE(e.at("dur").get<double>() == Approx(1.345678));
        REQUIRE(e.at("tid").get<int>() == 1001);
        REQUIRE(e.at("args").at("bytes") == 1024);
        saw_exact = true;
      }
    }
    if (e.at("ph") == "M" && e.at("name") == "thread_name" && e.at("args").at("name") == "NVLink comm #1")
      saw_lane_name = true;
  }
  REQUIRE(slices == 2);
  REQUIRE(saw_exact);
  REQUIRE(saw_lane_name);
}

TEST_CASE("format_us prints exact microseconds", "[trace]") {
  REQUIRE(format_us(SimTime::from_ps(1)) == "0.000001");
  REQUIRE(format_us(SimTime::from_ps(12'345'678'901)) == "12345.678901");
  REQUIRE(json_escape("a\"b\\c\n\x01") == "a\\\"b\\\\c\\n\\u0001");
}
