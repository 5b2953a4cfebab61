#pragma once
// The analysis toolkit behind the paper's figures, in one include:
//
//   jacobian.hpp             exact input Jacobians (one VJP per output, or one
//                            JVP per input) of x -> logits or x -> a_until
//   regression_jacobian.hpp  the paper's A.5 extraction: least squares on
//                            randomly perturbed copies, with a residual
//   spectrum.hpp             full SVD spectra (Figure 1 left)
//   alignment.hpp            perturbations against singular vectors
//                            (Figure 1 right, Figure 3 right)
//   linearity.hpp            deviation from linearity and sigma_max over the
//                            distance from x (Figure 2)
//   eps_selection.hpp        the rule that picks the training eps, and the
//                            accuracy-versus-eps curve (Figure 3 left)
//   statistics.hpp           means with standard-error bands over test points
//
// Curves come as curve_samples (samples[position][example]) for summarize().
#include "alignment.hpp"
#include "eps_selection.hpp"
#include "jacobian.hpp"
#include "linearity.hpp"
#include "regression_jacobian.hpp"
#include "spectrum.hpp"
#include "statistics.hpp"
