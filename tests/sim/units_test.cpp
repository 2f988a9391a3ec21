#include <catch2/catch.hpp>

#include "sim/units.hpp"

using namespace moesim::sim;

TEST_CASE("bytes: SI and binary prefixes", "[units]") {
  REQUIRE(parse_bytes("1B") == 1.0);
  REQUIRE(parse_bytes("2KB") == 2000.0);
  REQUIRE(parse_bytes("3MB") == 3e6);
  REQUIRE(parse_bytes("4GB") == 4e9);
  REQUIRE(parse_bytes("5TB") == 5e12);
  REQUIRE(parse_bytes("1KiB") == 1024.0);
  REQUIRE(parse_bytes("1MiB") == 1048576.0);
  REQUIRE(parse_bytes("80GiB") == 80.0 * 1073741824.0);
  REQUIRE(parse_bytes("1TiB") == 1099511627776.0);
  REQUIRE(parse_bytes("1.5 GiB") == 1.5 * 1073741824.0);
  REQUIRE(parse_bytes("0B") == 0.0);
  REQUIRE(parse_bytes("2e3B") == 2000.0);
}

TEST_CASE("bandwidth: bits vs bytes per second", "[units]") {
  REQUIRE(parse_bandwidth("450GB/s") == 450e9);
  REQUIRE(parse_bandwidth("400Gb/s") == 50e9);
  REQUIRE(parse_bandwidth("400Gb/s") == parse_bandwidth("50GB/s"));
  REQUIRE(parse_bandwidth("3.35TB/s") == Approx(3.35e12));
  REQUIRE(parse_bandwidth("1Mb/s") == 125000.0);
  REQUIRE(parse_bandwidth("8b/s") == 1.0);
  REQUIRE(parse_bandwidth("1GiB/s") == 1073741824.0);
}

TEST_CASE("time: ps to s, rounded to the picosecond", "[units]") {
  REQUIRE(parse_time("1ps").ps() == 1);
  REQUIRE(parse_time("2ns").ps() == 2000);
  REQUIRE(parse_time("2us").ps() == 2'000'000);
  REQUIRE(parse_time("2\xC2\xB5s").ps() == 2'000'000);
  REQUIRE(parse_time("1.5ms").ps() == 1'500'000'000);
  REQUIRE(parse_time("3s").ps() == 3'000'000'000'000);
  REQUIRE(parse_time("0.0006ns").ps() == 1);  // rounds to nearest
  REQUIRE(parse_time("1.4ps").ps() == 1);
  REQUIRE(parse_time("0ps").ps() == 0);
  REQUIRE(parse_time("0.0e5s").ps() == 0);
  REQUIRE_THROWS_AS(parse_time("1e9s"), UnitError);  // beyond ~106 days
  // A non-zero time never becomes 0: below half a picosecond, or below the smallest double.
  REQUIRE_THROWS_WITH(parse_time("0.0004ns"), Catch::Contains("rounds to 0 ps"));
  REQUIRE_THROWS_WITH(parse_time("0.4ps"), Catch::Contains("rounds to 0 ps"));
  REQUIRE_THROWS_WITH(parse_time("1e-400s"), Catch::Contains("underflows to 0"));
}

TEST_CASE("a non-zero quantity that underflows to 0 is an error, in every family", "[units]") {
  for (auto f : {UnitFamily::kBytes, UnitFamily::kBandwidth, UnitFamily::kTime, UnitFamily::kFlopRate}) {
    const std::string unit = f == UnitFamily::kBytes       ? "B"
                             : f == UnitFamily::kBandwidth ? "B/s"
                             : f == UnitFamily::kTime      ? "s"
                                                           : "FLOPS";
    REQUIRE_THROWS_WITH(parse_quantity("1e-400" + unit, f), Catch::Contains("underflows to 0"));
    REQUIRE_THROWS_WITH(parse_quantity("2.5e-310" + unit, f), Catch::Contains("underflows to 0"));  // subnormal
    REQUIRE(parse_quantity("0" + unit, f) == 0.0);
    REQUIRE(parse_quantity("0.000e-400" + unit, f) == 0.0);  // written as zero
  }
}

TEST_CASE("FLOP rates", "[units]") {
  REQUIRE(parse_flop_rate("989TFLOPS") == 989e12);
  REQUIRE(parse_flop_rate("989 TFLOP/s") == 989e12);
  REQUIRE(parse_flop_rate("1.979PFLOPS") == Approx(1.979e15));
  REQUIRE(parse_flop_rate("19.5TFLOPS") == Approx(19.5e12));
}

TEST_CASE("frequencies", "[units]") {
  REQUIRE(parse_frequency("1830MHz") == 1830e6);
  REQUIRE(parse_frequency("1.98 GHz") == Approx(1.98e9));
  REQUIRE(parse_frequency("50Hz") == 50.0);
  REQUIRE_THROWS_AS(parse_frequency("1830"), UnitError);
  REQUIRE_THROWS_AS(parse_frequency("1830mhz"), UnitError);
}

TEST_CASE("malformed quantities are rejected with the accepted units listed", "[units]") {
  const char* bad_bytes[] = {"12 GBs",  "-3GB",   "GB",     "12",    "",     "1e999GB", "12  GB",
                             "1.2.3GB", "0x10GB", "inf GB", "nanGB", "+5GB", "5 gb",    "12GB/s"};
  for (const char* b : bad_bytes) {
    INFO(b);
    REQUIRE_THROWS_AS(parse_bytes(b), UnitError);
  }
  REQUIRE_THROWS_AS(parse_time("-3us"), UnitError);
  REQUIRE_THROWS_AS(parse_time("3"), UnitError);
  REQUIRE_THROWS_AS(parse_time("3 sec"), UnitError);
  REQUIRE_THROWS_AS(parse_bandwidth("1e999GB/s"), UnitError);
  REQUIRE_THROWS_AS(parse_bandwidth("450GB"), UnitError);
  REQUIRE_THROWS_AS(parse_bandwidth("450 Gbps"), UnitError);
  REQUIRE_THROWS_AS(parse_flop_rate("989T"), UnitError);
  try {
    parse_bytes("12 GBs");
    FAIL("no exception");
  } catch (const UnitError& e) {
    const std::string msg = e.what();
    REQUIRE(msg.find("unknown unit 'GBs'") != std::string::npos);
    REQUIRE(msg.find("GiB") != std::string::npos);
  }
  try {
    parse_bandwidth("450");
    FAIL("no exception");
  } catch (const UnitError& e) {
    REQUIRE(std::string(e.what()).find("a unit is required") != std::string::npos);
  }
}

TEST_CASE("formatting round-trips", "[units]") {
  REQUIRE(format_bytes(80.0 * 1073741824.0) == "80GiB");
  REQUIRE(format_bandwidth(450e9) == "450GB/s");
  REQUIRE(format_flop_rate(989e12) == "989TFLOPS");
  for (double v : {1.0, 1000.0, 1536.0, 123456789.0, 3.35e12}) {
    REQUIRE(parse_bytes(format_bytes(v)) == v);
    REQUIRE(parse_bandwidth(format_bandwidth(v)) == v);
  }
}
