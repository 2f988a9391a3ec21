#include "validation_kernels/harness/grid.hpp"
#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/schema.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

using namespace moesim::vk;

TEST_CASE("count distributions keep the row total and their shape") {
  for (Distribution d : {Distribution::kEqual, Distribution::kMultinomial, Distribution::kPowerLaw,
                         Distribution::kOneHot, Distribution::kPartlyEmpty}) {
    const double p = d == Distribution::kPowerLaw ? 1.2 : d == Distribution::kPartlyEmpty ? 0.5 : 0;
    const auto c = make_counts(d, p, 64, 6401, 42);
    CHECK(count_stats(c).total == 6401);
    CHECK(make_counts(d, p, 64, 6401, 42) == c);  // seeded: reproducible
  }
  CHECK(count_stats(make_counts(Distribution::kOneHot, 0, 16, 100, 1)).n_active == 1);
  CHECK(count_stats(make_counts(Distribution::kPartlyEmpty, 0.5, 16, 100, 1)).n_active == 8);
  const CountStats eq = count_stats(make_counts(Distribution::kEqual, 0, 4, 10, 1));
  CHECK(eq.m_min == 2);
  CHECK(eq.m_max == 3);
}

TEST_CASE("tiles and bytes follow the tile-quantisation formula") {
  CHECK(gemm_tiles({1, 128, 129, 0}, 256, 128, 128) == (1 + 1 + 2) * 2);
  GemmConfig g;
  g.shape = {"t", "t", 4, 8};
  g.counts = {2, 0};
  CHECK(gemm_bytes_min(g, 2, 2) == Approx(1 * 4 * 8 * 2 + 2 * 4 * 2 + 2 * 8 * 2));
}

TEST_CASE("grids: ids are positions, held-out rows are marked, quick is small, full fits a 10-minute run") {
  GridOptions o;
  o.heldout = 20;
  const auto quick = build_grid(o);
  CHECK(quick.size() < 120);
  int heldout = 0;
  for (size_t i = 0; i < quick.size(); ++i) {
    CHECK(quick[i].config_id == static_cast<int64_t>(i));
    heldout += quick[i].heldout;
  }
  CHECK(heldout == 20);
  o.kind = GridKind::kFull;
  const auto full = build_grid(o);
  CHECK(full.size() > 500);
  CHECK(full.size() < 3500);
  std::set<std::string> shapes;
  for (const Config& c : full) {
    if (c.family == Family::kRouting) continue;
    shapes.insert(c.gemm.shape.model);
    CHECK(static_cast<double>(c.gemm.experts_local) * static_cast<double>(c.gemm.shape.k * c.gemm.shape.n) * 2 <=
          o.max_weight_bytes);
    if (c.family == Family::kGroupedGemmMasked) CHECK(count_stats(c.gemm.counts).m_max <= c.gemm.capacity);
  }
  CHECK(shapes.size() == 3);
}

TEST_CASE("CSV schema: versioned, unique columns, rows addressed by name") {
  auto unique = [](const auto& cols) {
    return std::set<std::string_view>(cols.begin(), cols.end()).size() == cols.size();
  };
  CHECK(unique(kRunsColumns));
  CHECK(unique(kMeasurementColumns));
  CHECK(kMeasurementColumns[0] == "schema_version");
  CHECK(kRunsColumns[0] == "schema_version");
  CHECK(csv_escape("a,b") == "\"a,b\"");
  CHECK(csv_escape("say \"x\"") == "\"say \"\"x\"\"\"");
  const std::string path = (std::filesystem::temp_directory_path() / "vk_csv_test.csv").string();
  {
    CsvWriter w(path, {"a", "b", "c"});
    w.write(CsvRow().set("c", 3).set("a", "x"));
    CHECK_THROWS(w.write(CsvRow().set("nope", 1)));
  }
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  CHECK(ss.str() == "a,b,c\nx,,3\n");
}

TEST_CASE("README documents every CSV column") {
  std::ifstream in(std::string(VK_SOURCE_DIR) + "/README.md");
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string readme = ss.str();
  for (auto col : kMeasurementColumns) {
    std::string quoted(1, '`');  // (built by append: GCC 12 warns falsely on "lit" + string&&)
    quoted.append(col).push_back('`');
    CHECK(readme.find(quoted) != std::string::npos);
  }
  for (auto col : kRunsColumns) {
    std::string quoted(1, '`');
    quoted.append(col).push_back('`');
    CHECK(readme.find(quoted) != std::string::npos);
  }
}
