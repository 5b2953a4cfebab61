#pragma once
// mpi_communicator: the communicator interface (communicator.hpp) over MPI,
// for jobs started the way clusters start them (mpirun, srun). Include it
// only where mpi.h is available: CMake's OPNORM_MPI option finds MPI and
// links MPI::MPI_CXX; the rest of opnorm never includes this file.
//
//   int main(int argc, char** argv) {
//     opnorm::distributed::mpi_session session(argc, argv);  // MPI_Init .. MPI_Finalize
//     opnorm::distributed::mpi_communicator world;            // MPI_COMM_WORLD
//     ...
//   }
//
// Errors: the communicator switches its MPI communicator to MPI_ERRORS_RETURN
// and turns a failed call into std::runtime_error naming the call and MPI's
// message. When a process of the job dies, mpirun (OpenMPI's default) ends
// the others rather than letting them wait forever in a collective; the
// training loop never waits on a rank without a collective all ranks reach.
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "communicator.hpp"

namespace opnorm {
namespace distributed {

namespace detail {
inline void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, message, &length);
  throw std::runtime_error(std::string("opnorm::mpi: ") + call + " failed: " + std::string(message, length));
}

// MPI counts are int: split longer arrays so no count overflows.
template <class F>
void in_int_chunks(std::size_t count, F&& f) {
  constexpr std::size_t chunk = static_cast<std::size_t>(std::numeric_limits<int>::max());
  for (std::size_t start = 0; start < count; start += chunk)
    f(start, static_cast<int>(count - start < chunk ? count - start : chunk));
}
}  // namespace detail

/// MPI_Init_thread on construction (MPI_THREAD_FUNNELED: only the main thread
/// calls MPI, OpenMP threads compute), MPI_Finalize on destruction. A session
/// does nothing when MPI is already initialized by someone else.
class mpi_session {
 public:
  mpi_session(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    detail::check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owns_ = true;
  }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }

 private:
  bool owns_ = false;
};

class mpi_communicator {
 public:
  /// Wraps comm (MPI_COMM_WORLD by default); MPI must be initialized.
  explicit mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized)
      throw std::logic_error("opnorm::mpi_communicator: MPI is not initialized; create an mpi_session first");
    detail::check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    detail::check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    detail::check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  void all_reduce_sum(double* values, index_t count) { reduce(values, count, MPI_DOUBLE); }
  void all_reduce_sum(float* values, index_t count) { reduce(values, count, MPI_FLOAT); }
  void all_reduce_sum(std::int64_t* values, index_t count) { reduce(values, count, MPI_INT64_T); }

  void broadcast(void* bytes, std::size_t count, int root) {
    detail::in_int_chunks(count, [&](std::size_t start, int n) {
      detail::check_mpi(MPI_Bcast(static_cast<char*>(bytes) + start, n, MPI_BYTE, root, comm_), "MPI_Bcast");
    });
  }

  void barrier() { detail::check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

  MPI_Comm native() const { return comm_; }

 private:
  template <class V>
  void reduce(V* values, index_t count, MPI_Datatype type) {
    if (count <= 0) return;
    detail::in_int_chunks(static_cast<std::size_t>(count), [&](std::size_t start, int n) {
      detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, values + start, n, type, MPI_SUM, comm_), "MPI_Allreduce");
    });
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

static_assert(is_communicator_v<mpi_communicator>, "mpi_communicator is a communicator");

}  // namespace distributed
}  // namespace opnorm
