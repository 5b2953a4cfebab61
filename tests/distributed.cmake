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
# one process's accuracies; a small `reproduce --distributed` on 2 ranks
# measures the models both runs share exactly as one process does.
if(OPNORM_MPI AND OPNORM_BUILD_EXAMPLES)
  add_test(NAME distributed_programs
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/programs/check_distributed_programs.sh $<TARGET_FILE_DIR:train>
                   ${CMAKE_CURRENT_BINARY_DIR}/distributed_programs ${MPIEXEC_EXECUTABLE})
  set_tests_properties(distributed_programs PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 900)
endif()

# nccl_communicator on one GPU, compiled by nvcc in the CUDA build when the
# toolkit has NCCL (tests/distributed/test_nccl_one_rank.cpp). Without a
# device it prints "no CUDA device: skipped" and ctest counts it as skipped;
# scripts/gpu_check.sh runs it on a GPU.
if(OPNORM_CUDA)
  find_library(OPNORM_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  find_path(OPNORM_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  if(OPNORM_NCCL_LIBRARY AND OPNORM_NCCL_INCLUDE_DIR)
    opnorm_cuda_program(test_nccl_one_rank ${CMAKE_CURRENT_SOURCE_DIR}/distributed/test_nccl_one_rank.cpp
                        ${CMAKE_CURRENT_SOURCE_DIR}/cuda_test_main.cpp)
    target_link_libraries(cuda_test_nccl_one_rank PRIVATE doctest::doctest ${OPNORM_NCCL_LIBRARY})
    target_include_directories(cuda_test_nccl_one_rank PRIVATE ${OPNORM_NCCL_INCLUDE_DIR})
    add_test(NAME cuda_test_nccl_one_rank COMMAND cuda_test_nccl_one_rank)
    set_tests_properties(cuda_test_nccl_one_rank PROPERTIES SKIP_RETURN_CODE 77)
    message(STATUS "opnorm: NCCL from ${OPNORM_NCCL_LIBRARY}")
  else()
    message(STATUS "opnorm: NCCL not found: nccl_communicator is not built")
  endif()
endif()
