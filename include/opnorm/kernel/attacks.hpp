#pragma once
// Attacks, one header per attack under attacks/ (this header includes them all):
//
//   attacks/pga.hpp        PGA/PGD and FGM in l2 or linf: the power-iteration kernel
//                          with a loss-gradient forward half and a projected step;
//                          robust_accuracy(model, attack_options, x, labels, eps_list)
//   attacks/apgd.hpp       APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020): adaptive
//                          step size, momentum and checkpoints; the dlr and targeted_dlr
//                          losses are in losses.hpp
//   attacks/ensemble.hpp   the worst case over a list of attacks (AutoAttack's way):
//                          worst_case, robust_accuracy(model, attacks, x, labels),
//                          make_apgd_ensemble (APGD-CE, then APGD-T)
//   attacks/rows.hpp       gathering and scattering the examples still robust
//
//   attack_options<float> options;     // float: the model's scalar type
//   options.eps = 1.5f;
//   auto attack = make_pga<l2>(model, options);
//   auto result = attack(x, labels);   // result.adversarial, result.success
//   apgd_options<float> apgd;
//   apgd.eps = 0.1f;
//   double acc = robust_accuracy(model, make_apgd_ensemble<linf>(model, apgd), x, labels);
#include "attacks/pga.hpp"
#include "attacks/apgd.hpp"
#include "attacks/ensemble.hpp"
