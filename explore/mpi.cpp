#include "explore/mpi.hpp"

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace moesim::explore {

namespace {
constexpr int kTagWork = 1;  // rank 0 -> worker: int64 run index, or -1 = stop
constexpr int kTagRow = 2;   // worker -> rank 0: "index\nrow"

void send_index(int rank, std::int64_t index) { MPI_Send(&index, 1, MPI_INT64_T, rank, kTagWork, MPI_COMM_WORLD); }
}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiSession::~MpiSession() { MPI_Finalize(); }

bool MpiSession::agree(bool ok) const {
  int v = ok ? 1 : 0;
  MPI_Bcast(&v, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return v != 0;
}

void MpiSession::abort(int code) const {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

void mpi_master(const MpiSession& mpi, ResultsWriter& writer, Progress& progress) {
  const std::vector<std::size_t>& todo = writer.todo();
  std::size_t next = 0;
  int busy = 0;
  progress.update(writer.received(), writer.failed());
  for (int r = 1; r < mpi.size(); ++r) {
    if (next < todo.size()) {
      send_index(r, static_cast<std::int64_t>(todo[next++]));
      ++busy;
    } else {
      send_index(r, -1);
    }
  }
  std::string buf;
  while (busy > 0) {
    // Poll with a short sleep rather than a blocking receive: Open MPI's blocking calls spin,
    // and rank 0 shares its core with a worker on small machines (--oversubscribe).
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kTagRow, MPI_COMM_WORLD, &flag, &st);
    if (flag == 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      continue;
    }
    int count = 0;
    MPI_Get_count(&st, MPI_CHAR, &count);
    buf.assign(static_cast<std::size_t>(count), '\0');
    MPI_Recv(buf.data(), count, MPI_CHAR, st.MPI_SOURCE, kTagRow, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    const std::size_t nl = buf.find('\n');
    if (nl == std::string::npos) throw std::runtime_error("malformed row message from an MPI worker");
    const std::size_t index = std::stoul(buf.substr(0, nl));
    std::string row = buf.substr(nl + 1);
    if (next < todo.size()) {
      send_index(st.MPI_SOURCE, static_cast<std::int64_t>(todo[next++]));
    } else {
      send_index(st.MPI_SOURCE, -1);
      --busy;
    }
    writer.journal(index, row);
    writer.put(index, std::move(row));
    progress.update(writer.received(), writer.failed());
  }
}

void mpi_worker(const MpiSession& mpi, const Sweep& sweep) {
  (void)mpi;
  for (;;) {
    std::int64_t index = -1;
    MPI_Recv(&index, 1, MPI_INT64_T, 0, kTagWork, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    if (index < 0) return;
    const std::string msg = std::to_string(index) + "\n" + run_row(sweep, static_cast<std::size_t>(index));
    MPI_Send(msg.data(), static_cast<int>(msg.size()), MPI_CHAR, 0, kTagRow, MPI_COMM_WORLD);
  }
}

}  // namespace moesim::explore
