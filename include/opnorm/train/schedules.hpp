#pragma once
// Learning-rate schedules. A schedule is anything callable as
//
//   double lr = schedule(epoch, step, steps_per_epoch);
//
// with epoch counted from 0 and step the index of the batch inside the
// epoch, also from 0. The trainer asks before every optimizer step, so a
// schedule may change the rate inside an epoch (warmup, cosine) or only at
// epoch boundaries (step decay). Because the rate is a pure function of the
// position in the run, a resumed run gets exactly the rates an
// uninterrupted one would have. A lambda or std::function with this
// signature is a schedule too.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "../detail/config.hpp"
#include "../detail/options.hpp"

namespace opnorm {

/// The same rate throughout.
struct constant_schedule {
  double learning_rate;

  explicit constant_schedule(double lr) : learning_rate(lr) {
    detail::require_real(lr, "constant_schedule", "learning_rate", detail::at_least(0));
  }
  double operator()(index_t, index_t, index_t) const { return learning_rate; }
};

/// lr * gamma^floor(epoch / step_epochs): multiply by gamma every step_epochs
/// epochs (torch.optim.lr_scheduler.StepLR stepped once per epoch).
struct step_decay_schedule {
  double learning_rate;
  index_t step_epochs;
  double gamma;

  step_decay_schedule(double lr, index_t step_epochs_, double gamma_)
      : learning_rate(lr), step_epochs(step_epochs_), gamma(gamma_) {
    detail::require_real(lr, "step_decay_schedule", "learning_rate", detail::at_least(0));
    detail::require_count(step_epochs_, "step_decay_schedule", "step_epochs", 1);
    detail::require_real(gamma_, "step_decay_schedule", "gamma", detail::greater_than(0));
  }
  double operator()(index_t epoch, index_t, index_t) const {
    return learning_rate * std::pow(gamma, static_cast<double>(epoch / step_epochs));
  }
};

/// Linear warmup over the first warmup_epochs, then half a cosine from lr down
/// to min_lr at the end of epoch `epochs`, evaluated per step so the rate
/// falls smoothly inside an epoch. With global step s = epoch *
/// steps_per_epoch + step, W warmup steps and S steps in total:
///   s <  W: lr * (s + 1) / W       (never exactly 0, so no step is wasted)
///   s >= W: min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2
/// Past the end the rate stays at min_lr.
struct cosine_schedule {
  double learning_rate;
  index_t epochs;
  index_t warmup_epochs;
  double min_learning_rate;

  cosine_schedule(double lr, index_t epochs_, index_t warmup_epochs_ = 0, double min_lr = 0.0)
      : learning_rate(lr), epochs(epochs_), warmup_epochs(warmup_epochs_), min_learning_rate(min_lr) {
    detail::require_real(lr, "cosine_schedule", "learning_rate", detail::at_least(0));
    detail::require_count(epochs_, "cosine_schedule", "epochs", 1);
    detail::require(warmup_epochs_ >= 0 && warmup_epochs_ < epochs_, "cosine_schedule",
                    "warmup_epochs must lie in [0, epochs)");
    detail::require_real(min_lr, "cosine_schedule", "min_learning_rate", detail::closed_interval(0, lr));
  }

  double operator()(index_t epoch, index_t step, index_t steps_per_epoch) const {
    detail::require_count(steps_per_epoch, "cosine_schedule", "steps_per_epoch", 1);
    const double s = static_cast<double>(epoch * steps_per_epoch + step);
    const double warmup = static_cast<double>(warmup_epochs * steps_per_epoch);
    const double total = static_cast<double>(epochs * steps_per_epoch);
    if (s < warmup) return learning_rate * (s + 1) / warmup;
    const double progress = std::min(1.0, (s - warmup) / (total - warmup));
    const double pi = 3.14159265358979323846;
    return min_learning_rate +
           (learning_rate - min_learning_rate) * 0.5 * (1.0 + std::cos(pi * progress));
  }
};

}  // namespace opnorm
