# One concept per header, and each header compiles on its own: every public
# header is compiled alone (-fsyntax-only) as the first include of a file.
file(GLOB_RECURSE _opnorm_headers RELATIVE ${PROJECT_SOURCE_DIR}/include CONFIGURE_DEPENDS
     ${PROJECT_SOURCE_DIR}/include/opnorm/*.hpp)
get_target_property(_opnorm_eigen_dirs Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
set(_opnorm_cccl "")
if(OPNORM_CCCL_INCLUDE_DIR)
  set(_opnorm_cccl "-isystem ${OPNORM_CCCL_INCLUDE_DIR}")
endif()
# distributed/mpi.hpp needs mpi.h: it is checked with MPI's include path
# where OPNORM_MPI found MPI, and not at all otherwise.
set(_opnorm_mpi "")
if(OPNORM_MPI)
  foreach(_dir ${MPI_CXX_INCLUDE_DIRS})
    string(APPEND _opnorm_mpi " -I${_dir}")
  endforeach()
endif()
# distributed/nccl.hpp needs nccl.h and cuda_runtime.h, which the CUDA
# toolkit keeps together; it is checked where they are found.
find_path(_opnorm_nccl_headers NAMES nccl.h cuda_runtime.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDA_HOME}/include /usr/local/cuda/include NO_DEFAULT_PATH)
foreach(header ${_opnorm_headers})
  string(REPLACE "/" "_" _name ${header})
  set(_extra "")
  if(header STREQUAL "opnorm/distributed/mpi.hpp")
    if(NOT OPNORM_MPI)
      continue()
    endif()
    set(_extra "${_opnorm_mpi}")
  endif()
  if(header STREQUAL "opnorm/distributed/nccl.hpp")
    if(NOT _opnorm_nccl_headers OR NOT EXISTS ${_opnorm_nccl_headers}/cuda_runtime.h)
      continue()
    endif()
    set(_extra " -I${_opnorm_nccl_headers}")
  endif()
  # backend/cpu_blas.hpp needs cblas.h: checked with the CBLAS that
  # OPNORM_BLAS found, and not at all otherwise.
  if(header STREQUAL "opnorm/backend/cpu_blas.hpp")
    if(NOT OPNORM_BLAS)
      continue()
    endif()
    set(_extra " -I${OPNORM_CBLAS_INCLUDE_DIR}")
  endif()
  add_test(NAME header_${_name}
    COMMAND sh -c "echo '#include <${header}>' | ${CMAKE_CXX_COMPILER} -std=c++17 -fopenmp -fsyntax-only -x c++ -I${PROJECT_SOURCE_DIR}/include -I${_opnorm_eigen_dirs} ${_opnorm_cccl}${_extra} -")
endforeach()
