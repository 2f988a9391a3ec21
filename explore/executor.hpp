#pragma once
/// \file
/// Executors of a sweep's remaining runs. Each one only decides where run_row(sweep, i) is
/// called; the rows, and so results.csv, are the same bytes for any thread or rank count.

#include "explore/progress.hpp"
#include "explore/results.hpp"
#include "explore/sweep.hpp"

namespace moesim::explore {

/// Runs writer.todo() on `threads` threads (run_ordered): each row is journaled as soon as it
/// finishes and appended to results.csv in run_index order on the calling thread.
void run_threads(const Sweep& sweep, ResultsWriter& writer, int threads, Progress& progress);

}  // namespace moesim::explore
