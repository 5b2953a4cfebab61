#pragma once
// How the programs that offer --distributed (train, attack, reproduce) run:
// in one process, or on every rank of an MPI job (mpirun -np N program
// --distributed ...) in a build with OPNORM_MPI=ON. Both hand the work one
// communicator type, any_communicator, so the training and attack code is
// compiled once for both.
//
// An error on one rank of a job ends the whole job: the other ranks may be
// waiting in a collective for the rank that failed, and would wait forever.
// The failing rank prints "<program>: error on rank R of N: <message>" and
// calls MPI_Abort with the exit code of the error (1, or 2 for a usage
// error).
#include <exception>
#include <iostream>
#include <string>

#include <opnorm/distributed/communicator.hpp>
#if OPNORM_HAVE_MPI
#include <opnorm/distributed/mpi.hpp>
#endif

#include "command_line.hpp"

namespace opnorm::command_line {

/// Calls work(comm) with the communicator of the job: every rank of
/// MPI_COMM_WORLD when distributed is set, or this process alone. Errors in
/// one process propagate to the caller; errors on a rank of a job end the
/// job as described above.
template <class Work>
void run_job(bool distributed, int& argc, char**& argv, const std::string& program, Work&& work) {
  if (!distributed) {
    opnorm::distributed::single_process one;
    opnorm::distributed::any_communicator comm(one);
    work(comm);
    return;
  }
#if OPNORM_HAVE_MPI
  opnorm::distributed::mpi_session session(argc, argv);
  opnorm::distributed::mpi_communicator world;
  opnorm::distributed::any_communicator comm(world);
  try {
    work(comm);
  } catch (const std::exception& e) {
    const bool usage = dynamic_cast<const usage_error*>(&e) != nullptr;
    std::cerr << program << ": error on rank " << world.rank() << " of " << world.size() << ": " << e.what()
              << (usage ? " (see --help)" : "") << '\n';
    MPI_Abort(world.native(), usage ? exit_usage : exit_failure);
  }
#else
  (void)argc;
  (void)program;
  (void)argv;
  throw usage_error("--distributed needs a build with MPI (cmake -DOPNORM_MPI=ON; Debian: libopenmpi-dev)");
#endif
}

}  // namespace opnorm::command_line
