#include "validation_kernels/harness/grid.hpp"
#include "validation_kernels/harness/csv.hpp"
#include "validation_kernels/harness/schema.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
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

TEST_CASE("grids: ids are positions, held-out rows are marked, quick is small, full is large") {
  GridOptions o;
  o.heldout = 20;
  const auto quick = build_grid(o);
  CHECK(quick.size() < 120);
  int heldout_grouped = 0;
  std::map<Family, int> fam_quick;
  for (size_t i = 0; i < quick.size(); ++i) {
    CHECK(quick[i].config_id == static_cast<int64_t>(i));
    ++fam_quick[quick[i].family];
    if (quick[i].family == Family::kGroupedGemm && quick[i].gemm.dtype == GemmDtype::kBf16)
      heldout_grouped += quick[i].heldout;
  }
  CHECK(heldout_grouped == 20);
  CHECK(fam_quick.size() == static_cast<size_t>(kFamilyCount));  // every family in the smoke grid
  o.kind = GridKind::kFull;
  const auto full = build_grid(o);
  CHECK(full.size() > 1500);
  CHECK(full.size() < 5000);
  std::set<std::string> shapes;
  std::map<Family, std::pair<int, int>> held;  // family -> (held-out, all)
  for (const Config& c : full) {
    ++held[c.family].second;
    held[c.family].first += c.heldout;
    if (!is_gemm(c.family)) continue;
    shapes.insert(c.gemm.shape.model);
    const double bytes = c.gemm.dtype == GemmDtype::kFp8E4m3 ? 1 : 2;
    CHECK(static_cast<double>(c.gemm.experts_local) * static_cast<double>(c.gemm.shape.k * c.gemm.shape.n) * bytes <=
          o.max_weight_bytes);
    if (c.family == Family::kGroupedGemmMasked) CHECK(count_stats(c.gemm.counts).m_max <= c.gemm.capacity);
    if (c.gemm.dtype == GemmDtype::kFp8E4m3) CHECK(c.gemm.shape.k % 128 == 0);
    CHECK(c.gemm.shape.n % 128 == 0);
  }
  CHECK(shapes.size() == 4);  // + Llama 3 70B dense layers
  for (const auto& [f, h] : held) {
    if (f == Family::kGroupedGemm) continue;  // random held-out configurations instead
    INFO(to_string(f));
    CHECK(h.first >= 1);                // every family has held-out rows
    CHECK(h.first <= h.second * 0.35);  // ... but is mostly fitted
  }
  for (const Config& c : full) {
    if (c.family == Family::kAttentionDecode) {
      CHECK(c.attention.q_len == 1);
      CHECK(c.attention.heads / c.attention.kv_heads <= 16);
    }
    if (c.family == Family::kElementwise && c.elementwise.op == ElementwiseOp::kQuantFp8)
      CHECK(c.elementwise.hidden % 128 == 0);
  }
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
  for (auto col : kSelftestColumns) {
    std::string quoted(1, '`');
    quoted.append(col).push_back('`');
    CHECK(readme.find(quoted) != std::string::npos);
  }
  CHECK(readme.find("schema_version " + std::to_string(kSchemaVersion)) != std::string::npos);
}
