#pragma once
// opnorm: adversarial training, global and data-dependent spectral norm
// regularization as one power-iteration kernel. The one header users include.
#include "backend/cpu.hpp"
#include "tensor.hpp"
#include "mode.hpp"
#include "random.hpp"
#include "per_example.hpp"

#include "layers/batch_norm.hpp"
#include "layers/conv2d.hpp"
#include "layers/dense.hpp"
#include "layers/flatten.hpp"
#include "layers/max_pool2d.hpp"
#include "layers/relu.hpp"
#include "layers/standardize.hpp"
#include "sequential.hpp"
#include "networks.hpp"

#include "losses.hpp"
#include "norms.hpp"
#include "operators.hpp"
#include "steps.hpp"
#include "power_iteration.hpp"
#include "attacks.hpp"  // attacks/: pga, apgd, the worst case over an ensemble

#include "methods/adversarial.hpp"
#include "methods/data_dependent_snr.hpp"
#include "methods/global_snr.hpp"
#include "methods/standard.hpp"

#include "train/train.hpp"
#include "data/data.hpp"
#include "io/checkpoint.hpp"
#include "transfer.hpp"
#include "analysis/analysis.hpp"
