// Checked outputs (issue 23): a full disk is an error naming the file, for the write, the flush
// and the close; what was written before is a prefix of the content.
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include "sim/output_file.hpp"
#include "sim/trace.hpp"

using namespace moesim::sim;
namespace fs = std::filesystem;

TEST_CASE("a full device is an error at the write, flush or close", "[output]") {
  REQUIRE_THROWS_WITH(write_file("/dev/full", "x"), "cannot write /dev/full: No space left on device");
  OutputFile f("/dev/full");
  f.write("small");  // buffered: the error shows at the flush
  REQUIRE_THROWS_WITH(f.flush(), "cannot write /dev/full: No space left on device");
  OutputFile g("/dev/full");
  g.write(std::string(100, 'x'));
  REQUIRE_THROWS_WITH(g.close(), "cannot write /dev/full: No space left on device");
  REQUIRE_THROWS_WITH(OutputFile("/nonexistent-dir/x"), "cannot write /nonexistent-dir/x: No such file or directory");
  // A trace writer on a full device fails with the file's name too.
  TraceWriter t("/dev/full");
  t.process(0, "gpu 0");
  REQUIRE_THROWS_WITH(t.close(), "cannot write /dev/full: No space left on device");
}

TEST_CASE("checked writes reach the file, appends keep what was there", "[output]") {
  const fs::path p = fs::temp_directory_path() / ("moesim-out-" + std::to_string(::getpid()));
  write_file(p.string(), "header\n");
  {
    OutputFile f(p.string(), OutputFile::Mode::kAppend);
    f.write("row 1\n");
    f.flush();
    f.write("row 2\n");
    f.close();
    f.close();  // idempotent
  }
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  CHECK(ss.str() == "header\nrow 1\nrow 2\n");
  fs::remove(p);
}

TEST_CASE("atomic writes replace the file whole and leave no temporary behind", "[output]") {
  const fs::path dir = fs::temp_directory_path() / ("moesim-atomic-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string p = (dir / "plan.csv").string();
  write_file_atomic(p, "v1\n");
  write_file_atomic(p, "v2 longer\n");
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  CHECK(ss.str() == "v2 longer\n");
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}) == 1);
  // A target that is not a regular file is written directly (and a full one reported by name).
  REQUIRE_THROWS_WITH(write_file_atomic("/dev/full", "x"), "cannot write /dev/full: No space left on device");
  // A directory that does not exist: the error names the target, not the temporary file.
  REQUIRE_THROWS_WITH(write_file_atomic((dir / "no" / "x").string(), "x"),
                      "cannot write " + (dir / "no" / "x").string() + ": No such file or directory");
  fs::remove_all(dir);
}
