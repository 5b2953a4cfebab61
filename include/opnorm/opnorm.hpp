#pragma once
// opnorm: adversarial training, global and data-dependent spectral norm
// regularization as one power-iteration kernel. The one header users include.
#include "backend/cpu.hpp"  // backend::cpu_blas is backend/cpu_blas.hpp (needs cblas.h)
#include "core/tensor.hpp"
#include "core/mode.hpp"
#include "core/random.hpp"
#include "core/per_example.hpp"

#include "nn/layers/batch_norm.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/dense.hpp"
#include "nn/layers/flatten.hpp"
#include "nn/layers/max_pool2d.hpp"
#include "nn/layers/relu.hpp"
#include "nn/layers/standardize.hpp"
#include "nn/sequential.hpp"
#include "nn/networks.hpp"

#include "nn/losses.hpp"
#include "kernel/norms.hpp"
#include "kernel/operators.hpp"
#include "kernel/steps.hpp"
#include "kernel/power_iteration.hpp"
#include "kernel/attacks.hpp"  // attacks/: pga, apgd, the worst case over an ensemble

#include "methods/adversarial.hpp"
#include "methods/data_dependent_snr.hpp"
#include "methods/global_snr.hpp"
#include "methods/standard.hpp"

#include "train/train.hpp"
#include "distributed/data_parallel.hpp"  // communicators; the MPI one is distributed/mpi.hpp (needs mpi.h)
#include "data/data.hpp"
#include "io/checkpoint.hpp"
#include "nn/transfer.hpp"
#include "analysis/analysis.hpp"
