#include <catch2/catch.hpp>

#include "config/reader.hpp"
#include "models/cost/csv.hpp"

using moesim::models::cost::CsvTable;

namespace {
std::string parse_error(const std::string& text) {
  try {
    CsvTable::parse(text, "t.csv");
  } catch (const moesim::config::ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("CSV: quoted fields, escaped quotes, embedded commas and newlines, CRLF", "[cost][csv]") {
  const CsvTable t = CsvTable::parse(
      "a,b,c\r\n"
      "1,\"x, y\",\"say \"\"hi\"\"\"\r\n"
      "\n"
      "2,\"two\nlines\",\r\n"
      "3,,last",
      "t.csv");
  REQUIRE(t.header() == std::vector<std::string>{"a", "b", "c"});
  REQUIRE(t.rows().size() == 3);
  REQUIRE(t.str(t.rows()[0], "b") == "x, y");
  REQUIRE(t.str(t.rows()[0], "c") == "say \"hi\"");
  REQUIRE(t.rows()[0].line == 2);
  REQUIRE(t.str(t.rows()[1], "b") == "two\nlines");
  REQUIRE(t.str(t.rows()[1], "c").empty());
  REQUIRE(t.rows()[1].line == 4);
  REQUIRE(t.rows()[2].line == 6);  // the quoted newline counts as a line
  REQUIRE(t.integer(t.rows()[2], "a") == 3);
  REQUIRE(t.str(t.rows()[2], "c") == "last");
}

TEST_CASE("CSV: columns by name, typed reads with located errors", "[cost][csv]") {
  const CsvTable t = CsvTable::parse("x,n,flag\n1.5,7,1\nabc,7.5,maybe\n", "t.csv");
  REQUIRE(t.num(t.rows()[0], "x") == 1.5);
  REQUIRE(t.flag(t.rows()[0], "flag"));
  auto what = [](auto fn) {
    try {
      fn();
    } catch (const moesim::config::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  REQUIRE_THAT(what([&] { t.num(t.rows()[1], "x"); }), Catch::Contains("t.csv:3:1: column 'x': 'abc' is not"));
  REQUIRE_THAT(what([&] { t.integer(t.rows()[1], "n"); }), Catch::Contains("t.csv:3:2: column 'n'"));
  REQUIRE_THAT(what([&] { t.flag(t.rows()[1], "flag"); }), Catch::Contains("t.csv:3:3: column 'flag'"));
  REQUIRE_THAT(what([&] {
                 t.require_columns({"x", "time", "flga"});
               }),
               Catch::Contains("t.csv:1:0: column 'time': required column is missing") &&
                   Catch::Contains("column 'flga'") && Catch::Contains("did you mean 'flag'"));
}

TEST_CASE("CSV: malformed input is located", "[cost][csv]") {
  REQUIRE_THAT(parse_error("a,b\n1,\"open\n2,3\n"), Catch::Contains("t.csv:2:") && Catch::Contains("unterminated"));
  REQUIRE_THAT(parse_error("a,b\n1,2,3\n"),
               Catch::Contains("t.csv:2:") && Catch::Contains("3 fields, the header has 2"));
  REQUIRE_THAT(parse_error("a,b\n1,x\"y\n"), Catch::Contains("t.csv:2:") && Catch::Contains("stray"));
  REQUIRE_THAT(parse_error("a,b\n\"1\"x,2\n"), Catch::Contains("after the closing quote"));
  REQUIRE_THAT(parse_error("a,a\n1,2\n"), Catch::Contains("column 'a'") && Catch::Contains("duplicate"));
  REQUIRE_THAT(parse_error(""), Catch::Contains("header row is required"));
  REQUIRE_THAT(parse_error("a,,c\n"), Catch::Contains("empty column name"));
}
