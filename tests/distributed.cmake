# The data-parallel tests, run by ctest under mpirun with two ranks on
# loopback (OPNORM_MPI=ON). OpenMPI refuses to start as root unless told it
# may, which containers need; the variables do that without a flag that
# other MPI implementations would reject. --oversubscribe lets two ranks
# share a machine with fewer free slots (CI's 2 cores, with ctest running
# other tests beside them).
if(OPNORM_MPI)
  add_executable(test_data_parallel ${CMAKE_CURRENT_SOURCE_DIR}/distributed/test_data_parallel.cpp)
  target_link_libraries(test_data_parallel PRIVATE opnorm_mpi doctest::doctest)
  target_include_directories(test_data_parallel PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  add_test(NAME test_data_parallel_2_ranks
           COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 2 --oversubscribe ${MPIEXEC_PREFLAGS}
                   $<TARGET_FILE:test_data_parallel> ${MPIEXEC_POSTFLAGS})
  set_tests_properties(test_data_parallel_2_ranks PROPERTIES TIMEOUT 900
    ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_btl=self,tcp;OMPI_MCA_btl_tcp_if_include=lo")
endif()

# The programs on 2 ranks (tests/programs/check_distributed_programs.sh):
# kill one rank of `mpirun -np 2 train --distributed` mid-epoch, and the job
# stops with mpirun's error instead of hanging, then resumes from its last
# checkpoint on 2 ranks and on 1; `attack --distributed` on 2 ranks prints
# one process's accuracies.
if(OPNORM_MPI AND OPNORM_BUILD_EXAMPLES)
  add_test(NAME distributed_programs
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/programs/check_distributed_programs.sh $<TARGET_FILE_DIR:train>
                   ${CMAKE_CURRENT_BINARY_DIR}/distributed_programs ${MPIEXEC_EXECUTABLE})
  set_tests_properties(distributed_programs PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 900)
endif()
