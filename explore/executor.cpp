#include "explore/executor.hpp"

#include <string>

#include "explore/pool.hpp"

namespace moesim::explore {

void run_threads(const Sweep& sweep, ResultsWriter& writer, int threads, Progress& progress) {
  const std::vector<std::size_t>& todo = writer.todo();
  progress.update(writer.received(), writer.failed());
  run_ordered<std::string>(
      todo.size(), threads,
      [&](std::size_t k) {
        std::string row = run_row(sweep, todo[k]);
        writer.journal(todo[k], row);
        return row;
      },
      [&](std::size_t k, std::string&& row) {
        writer.put(todo[k], std::move(row));
        progress.update(writer.received(), writer.failed());
      });
}

}  // namespace moesim::explore
