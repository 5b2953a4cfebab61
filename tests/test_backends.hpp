#pragma once
// The backends every numerical test runs on. The tests are written once,
// as TEST_CASE_TEMPLATE over this list, so a layer, the kernel, an attack
// or a method is checked by the same finite differences, SVDs and theorems
// on each backend. The Thrust host systems run the very Thrust kernels a
// GPU runs, on the CPU, which is how the Thrust backend is tested on a
// machine without a GPU.
#include <opnorm/backend/cpu.hpp>
#include <opnorm/backend/thrust.hpp>

#define OPNORM_TEST_BACKENDS \
  opnorm::backend::cpu, opnorm::backend::thrust<opnorm::backend::system::omp>, \
      opnorm::backend::thrust<opnorm::backend::system::cpp>
