#pragma once
/// \file
/// The MPI sweep executor (built with -DMOESIM_WITH_MPI=ON): the same `moesim sweep` command
/// under `mpirun -n R`. Every rank loads and validates the sweep itself (deterministically, so
/// all agree); rank 0 prepares the results directory, hands out run indices one at a time to
/// ranks 1..R-1 as they become free, and writes the rows in run_index order. With R = 1 the
/// thread executor runs instead (-j applies). Rows do not depend on which rank ran them.

#include "explore/progress.hpp"
#include "explore/results.hpp"
#include "explore/sweep.hpp"

namespace moesim::explore {

/// MPI_Init on construction, MPI_Finalize on destruction. One per process.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  /// Broadcasts rank 0's `ok` to every rank and returns it (collective).
  bool agree(bool ok) const;
  /// Ends every rank (after an error on rank 0 that the others cannot see).
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0;
  int size_ = 1;
};

/// Rank 0 of a multi-rank sweep: dynamic hand-out of writer.todo() to ranks 1..R-1.
void mpi_master(const MpiSession& mpi, ResultsWriter& writer, Progress& progress);
/// Ranks 1..R-1: run what rank 0 hands out until it says stop.
void mpi_worker(const MpiSession& mpi, const Sweep& sweep);

}  // namespace moesim::explore
