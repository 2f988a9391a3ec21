#pragma once
/// \file
/// `moesim fidelity [DIR] [-j N] [-o DIR] [--only GLOB] [--baseline FILE] [--set key=value ...]`
/// (explore/fidelity.hpp) and `moesim cost gemm|grouped-gemm|attention ...`
/// (engine/kernel_query.hpp): the validation matrix and the kernel cost query.

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace moesim::cli {

class FidelityCommand {
 public:
  explicit FidelityCommand(CLI::App& app);
  bool selected() const { return static_cast<bool>(*cmd_); }
  /// Exit codes: 0 ok; 2 bad matrix or arguments (thrown as config::ConfigError); 3 some
  /// points failed to simulate; 4 the --baseline regression gate failed.
  int run() const;

 private:
  CLI::App* cmd_ = nullptr;
  std::string dir_;
  std::string out_dir_;
  std::string only_;
  std::string baseline_;
  std::vector<std::string> sets_;
  int threads_ = 1;
  bool quiet_ = false;
};

class CostCommand {
 public:
  explicit CostCommand(CLI::App& app);
  bool selected() const { return static_cast<bool>(*cmd_); }
  int run() const;

 private:
  CLI::App* cmd_ = nullptr;
  std::string op_;
  std::string gpu_, dtype_, out_dtype_, tile_, profile_, layout_, phase_, rows_;
  long long m_ = -1, n_ = -1, k_ = -1, groups_ = -1, batch_ = -1, q_len_ = -1, kv_len_ = -1, heads_ = -1,
            kv_heads_ = -1, head_dim_ = -1;
  std::string causal_;
  bool json_ = false;
};

}  // namespace moesim::cli
