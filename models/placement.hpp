#pragma once
/// \file
/// Experts -> expert-parallel ranks, optional EPLB-style replication of hot experts, and the
/// per-(source rank, destination rank) dispatch/combine byte matrices that the network's
/// all-to-allv consumes.
///
/// Routing group g lives on EP rank g % ranks (one group = one rank's micro-batch). The matrices
/// include the diagonal (rank to itself, normally a local copy) so that row sums equal what a
/// rank dispatches; the network model decides what a self-transfer costs.

#include <cstdint>
#include <string>
#include <vector>

#include "models/router.hpp"

namespace moesim::models {

struct Placement {
  int ranks = 0;
  int experts = 0;
  int slots_per_rank = 0;
  std::vector<std::vector<int>> replicas;         ///< [E] ranks holding a copy, ascending
  std::vector<std::vector<int>> experts_on_rank;  ///< [R] experts held, ascending
};

/// Rank r holds experts [r*E/R, (r+1)*E/R). Throws std::invalid_argument unless R divides E
/// (validate user input first with placement_problem()).
Placement place_contiguous(int experts, int ranks);

/// EPLB-style: `redundant` extra slots go one at a time to the expert with the highest load per
/// replica (ties: lower index); then replicas, heaviest per-replica load first, go to the least
/// loaded rank with a free slot that does not hold that expert yet (ties: lower rank). Requires
/// (E + redundant) % ranks == 0. With redundant == 0 and balanced load this is still a
/// load-balancing permutation, not the contiguous layout.
Placement place_replicated(const std::vector<double>& expert_load, int ranks, int redundant);

/// Row bytes for one token row of `hidden` elements.
enum class WireFormat {
  kBf16,  ///< 2 bytes per element
  kFp8,   ///< 1 byte per element + one fp32 scale per 128 elements (DeepEP / DeepSeek-V3 dispatch)
  kFp32,
};
std::int64_t row_bytes(std::int64_t hidden, WireFormat f);

struct ByteMatrixOptions {
  std::int64_t hidden = 0;
  WireFormat dispatch = WireFormat::kBf16;
  WireFormat combine = WireFormat::kBf16;
  /// true: one row per (token, destination rank) with >= 1 kept expert there (DeepEP);
  /// false: one row per kept assignment (Megatron all-to-all dispatcher).
  bool dedup_per_rank = false;
  /// true (pad_to_capacity): each (source, expert) sends exactly C rows.
  bool pad_to_capacity = false;
};

/// Row-major [src * ranks + dst] matrices for one MoE layer.
struct DispatchMatrices {
  int ranks = 0;
  std::vector<std::int64_t> dispatch_rows;    ///< rows sent src -> dst
  std::vector<std::uint64_t> dispatch_bytes;  ///< bytes sent src -> dst (dispatch)
  std::vector<std::uint64_t> combine_bytes;   ///< bytes sent back, [sender (expert rank) * ranks + receiver]
  /// Per destination rank: expert rows it computes (kept, plus padding when padded).
  std::vector<std::int64_t> rank_rows;
  std::uint64_t at(const std::vector<std::uint64_t>& m, int src, int dst) const {
    return m[static_cast<std::size_t>(src) * static_cast<std::size_t>(ranks) + static_cast<std::size_t>(dst)];
  }
};

/// Builds the matrices from a routed layer. combine_bytes is indexed [sender * ranks + receiver]
/// like dispatch_bytes: combine_bytes[d][s] carries the results of dispatch_bytes[s][d] back.
/// Replicated experts split each source's rows evenly over their replicas (remainder rows go to
/// replicas in order starting at index src % replicas). Dedup needs per-token data (token mode).
DispatchMatrices build_dispatch_matrices(const LayerRouting& layer, const Placement& placement,
                                         const ByteMatrixOptions& opt);

/// DeepEP's normal (high-throughput) dispatch (deepseek-ai/DeepEP csrc/kernels/internode.cu):
/// a token goes once to every destination node over RDMA, to the GPU of that node with the
/// source's local index (the relay), which forwards it over NVLink to each destination rank of
/// its node that holds one of the token's experts (one row per (token, rank)); inside the
/// source's own node the token goes straight to each destination rank. Needs the layer routed
/// with a DestinationMap (GroupRouting::dest_rank_tokens / dest_node_tokens).
/// Matrix entries between ranks of different nodes are the RDMA bytes (src -> relay); entries
/// inside a node are NVLink bytes (direct sends plus the relay's forwarding), so one direct
/// all-to-allv of the matrix is the kernel with its RDMA and NVLink stages fully pipelined.
/// Combine is the reverse (reduced in the node before the RDMA send: one row per (token,
/// node)). node_of_rank / local_of_rank place EP ranks; every (node, local index) pair a relay
/// needs must be an EP rank (whole nodes), else std::invalid_argument.
DispatchMatrices build_deepep_normal_matrices(const LayerRouting& layer, const Placement& placement,
                                              const ByteMatrixOptions& opt, const std::vector<int>& node_of_rank,
                                              const std::vector<int>& local_of_rank);

/// Per-rank routed rows and max/mean over ranks (how unevenly EP ranks are loaded).
std::vector<std::int64_t> rank_loads(const LayerRouting& layer, const Placement& placement);

}  // namespace moesim::models
