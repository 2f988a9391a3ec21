// Hostile YAML and input files (issue 23): every case is a located ConfigError, never a crash,
// a hang, unbounded work or a silently ignored part of the file.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "config/input_file.hpp"
#include "config/reader.hpp"

using namespace moesim::config;
namespace fs = std::filesystem;

namespace {
std::string error_of(const std::string& text) {
  try {
    (void)Document::load_string(text, "h.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("no ConfigError for:\n" << text);
  return {};
}

std::string laughs(int levels) {
  std::ostringstream s;  // (string concatenation here trips a GCC 12 -Wrestrict false positive)
  s << "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < levels; ++i) {
    s << "l" << i << ": &l" << i << " [";
    for (int k = 0; k < 10; ++k) s << (k ? ", *l" : "*l") << i - 1;
    s << "]\n";
  }
  return s.str();
}

struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("moesim-hostile-" + std::to_string(::getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
};
}  // namespace

TEST_CASE("aliases: a recursive alias and alias bombs are refused, ordinary aliases work", "[config][hostile]") {
  CHECK(error_of("a: &a [ *a ]\n") == "h.yaml:1:9: alias '*a' refers to the node that contains it (a recursive alias)");
  CHECK(error_of("a: &a { b: { c: *a } }\n").find("recursive alias") != std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string bomb = error_of(laughs(9));  // 10^9 nodes if expanded
  CHECK(bomb.find("aliases expand this document by more than 1000000 nodes") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  // 10^5 expanded nodes are within the budget and read normally.
  Diagnostics d;
  const auto doc = Document::load_string(laughs(5) + "name: &n demo\nalso: *n\n", "ok.yaml");
  const Node root = doc.root(d);
  CHECK(root.req_string("also") == "demo");
  CHECK(root.child("l4").items().size() == 10);
}

TEST_CASE("one document per file; keys are plain names", "[config][hostile]") {
  CHECK(error_of("a: 1\n---\nb: 2\n") ==
        "h.yaml:2:1: a second YAML document starts here (after '---'); a moesim input file holds exactly one document");
  CHECK_NOTHROW(Document::load_string("--- \na: 1\n...\n", "ok.yaml"));  // explicit markers around one document
  CHECK(error_of("? [a, b]\n: 1\n").find("a key must be a plain name, not a list") != std::string::npos);
  CHECK(error_of("? {a: 1}\n: 1\n").find("a key must be a plain name, not a mapping") != std::string::npos);
  CHECK(error_of("~: 1\n").find("a null key") != std::string::npos);
  CHECK(error_of("a: {b: 1, b: 2}\n").find("a.b: duplicate key") != std::string::npos);
}

TEST_CASE("an unterminated quote is a syntax error at the quote; closed quotes are fine", "[config][hostile]") {
  CHECK(error_of("name: \"demo\nmodel: x\n") ==
        "h.yaml:1:7: YAML syntax error: unterminated quoted string (no closing \" before the end)");
  CHECK(error_of("name: 'it''s\nmodel: x\n").find("unterminated quoted string (no closing ' before the end)") !=
        std::string::npos);
  CHECK(error_of("name: 'it''s\n").rfind("h.yaml:1:", 0) == 0);  // yaml-cpp itself sees this one
  Diagnostics d;
  const auto doc = Document::load_string("a: \"x\\\"y\"\nb: 'it''s'\nc: &c \"z\"\nd: |\n  \"text\n", "ok.yaml");
  const Node root = doc.root(d);
  CHECK(root.req_string("a") == "x\"y");
  CHECK(root.req_string("b") == "it's");
  CHECK(root.req_string("c") == "z");
  CHECK(root.req_string("d") == "\"text\n");
}

TEST_CASE("--set values get the same checks as files", "[config][hostile]") {
  auto doc = Document::load_string("a: 1\n", "ok.yaml");
  REQUIRE_THROWS_WITH(doc.apply_override("a=&x [*x]"),
                      "--set a=&x [*x]: a: alias '*x' refers to the node that contains it (a recursive alias)");
  REQUIRE_THROWS_WITH(doc.apply_override("a=\"open\nb: 1\n"), Catch::Contains("unterminated quoted string"));
  REQUIRE_THROWS_WITH(doc.apply_override("a={b: 1, b: 2}"), Catch::Contains("duplicate key"));
}

TEST_CASE("input files: regular files only, with a size cap", "[config][hostile]") {
  Scratch s;
  const std::string fifo = (s.dir / "fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_WITH(read_input_file(fifo, 1 << 20, "routing trace"),
                      fifo + ": routing trace is a FIFO (named pipe), not a regular file");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));  // no writer: it must not block
  REQUIRE_THROWS_WITH(Document::load_file(fifo), fifo + ": is a FIFO (named pipe), not a regular file");
  REQUIRE_THROWS_WITH(read_input_file("/dev/zero", 1 << 20, ""),
                      "/dev/zero: is a character device, not a regular file");
  REQUIRE_THROWS_WITH(read_input_file(s.dir.string(), 1 << 20, ""),
                      s.dir.string() + ": is a directory, not a regular file");
  REQUIRE_THROWS_WITH(read_input_file((s.dir / "none").string(), 1 << 20, "x", "k"),
                      (s.dir / "none").string() + ": k: x file not found");
  const std::string big = (s.dir / "big.yaml").string();
  std::ofstream(big) << std::string(100, 'a');
  REQUIRE_THROWS_WITH(read_input_file(big, 64, ""),
                      big + ": is 100 bytes, more than the 64 bytes an input file of this kind may have");
  CHECK(read_input_file(big, 100, "").size() == 100);
  CHECK(input_file_problem(big, 64).find("more than") != std::string::npos);
  CHECK(input_file_problem(big, 100).empty());
  CHECK(input_file_problem(fifo, 100) == "is a FIFO (named pipe), not a regular file");
  // A symbolic link to a regular file is read; one to a FIFO is refused like the FIFO.
  fs::create_symlink(big, s.dir / "link");
  CHECK(read_input_file((s.dir / "link").string(), 100, "").size() == 100);
  fs::create_symlink(fifo, s.dir / "fifolink");
  CHECK_THROWS_WITH(read_input_file((s.dir / "fifolink").string(), 100, ""), Catch::Contains("FIFO"));
}

TEST_CASE("did-you-mean hints do bounded work for long words", "[config][hostile]") {
  const std::string long_word(200000, 'a');
  const std::vector<std::string> candidates(100, std::string(200000, 'b'));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(did_you_mean(long_word, candidates).has_value());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));  // 100 x 200k^2 cells otherwise
  CHECK(did_you_mean("trian", {"train", "decode", "t"}) == std::optional<std::string>("train"));
  CHECK(did_you_mean("capacity_factr", {std::string(5000, 'c'), "capacity_factor"}) ==
        std::optional<std::string>("capacity_factor"));
}
