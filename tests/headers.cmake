# One concept per header, and each header compiles on its own: every public
# header is compiled alone (-fsyntax-only) as the first include of a file.
file(GLOB_RECURSE _opnorm_headers RELATIVE ${PROJECT_SOURCE_DIR}/include CONFIGURE_DEPENDS
     ${PROJECT_SOURCE_DIR}/include/opnorm/*.hpp)
get_target_property(_opnorm_eigen_dirs Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
set(_opnorm_cccl "")
if(OPNORM_CCCL_INCLUDE_DIR)
  set(_opnorm_cccl "-isystem ${OPNORM_CCCL_INCLUDE_DIR}")
endif()
foreach(header ${_opnorm_headers})
  string(REPLACE "/" "_" _name ${header})
  add_test(NAME header_${_name}
    COMMAND sh -c "echo '#include <${header}>' | ${CMAKE_CXX_COMPILER} -std=c++17 -fopenmp -fsyntax-only -x c++ -I${PROJECT_SOURCE_DIR}/include -I${_opnorm_eigen_dirs} ${_opnorm_cccl} -")
endforeach()
