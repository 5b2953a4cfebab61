#pragma once
// APGD: Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial
// robustness with an ensemble of diverse parameter-free attacks"), the core
// of AutoAttack, in l2 and linf, with three losses:
//
//   apgd<Model, Norm, softmax_cross_entropy>   APGD-CE
//   apgd<Model, Norm, dlr>                     APGD-DLR
//   apgd<Model, Norm, targeted_dlr>            APGD-T: targeted DLR towards each of the
//                                              target_classes highest non-true classes at x
//
//   apgd_options<float> o;
//   o.eps = 0.1f;
//   auto attack = make_apgd<linf, dlr>(model, o);
//   auto result = attack(x, labels);   // attack_result: adversarial, success, loss
//
// One run, per example, from x_0 = x + eps * (a random point of the ball
// pushed out to its surface), with eta = 2 eps and, for k = 0 .. N-1,
//
//   z       = P(x_k + eta * Norm::steepest_ascent(grad f(x_k)))     (l2: g/||g||, linf: sign g)
//   x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))          a = 0.75, a = 1 at k = 0
//
// where P projects onto the eps-ball (Norm::project) and then clips to the
// box. At the checkpoints w_j (apgd_checkpoints: 22, 41, 57, 70, 80, 87, 93,
// 99 for N = 100) an example halves its eta and restarts from its best
// point x_max (and its gradient) when
//
//   1. at most rho = 0.75 of the steps since w_{j-1} increased the loss, or
//   2. eta was not halved at w_{j-1} and the best loss did not improve since.
//
// Success is misclassification by any iterate (APGD-T too: its targets only
// steer the loss). Examples misclassified at x are not attacked, and each
// restart and each target class runs only on the examples still robust.
// Within a run, an example leaves the batch once an iterate misclassifies
// it (apgd_options::drop_broken): its result is final from then on, so the
// remaining iterations are spent on the examples still robust only.
//
// Why APGD is not the power_iteration kernel. PGA is that kernel because
// each PGA iterate is a function of the previous one and of the direction
// alone: x_k = Step(x_{k-1}, Norm::steepest_ascent(J^T u_k)). An APGD
// iterate also needs x_{k-2} (the momentum term), a step size of its own
// per example that the run changes, and bookkeeping the kernel has no place
// for: the best point and its gradient, the loss history since the last
// checkpoint, and a restart from the best point that rewinds the iterate.
// Folding that into power_iteration would give every other composition
// state it does not use. What APGD does reuse is the kernel's vocabulary:
// the forward half is the loss_gradient operator's (model.forward in
// mode::eval, then a loss policy's gradient with reduction::sum so each
// example is attacked alone), the backward half is the same VJP without
// parameter gradients, the direction is Norm::steepest_ascent, the ball is
// Norm::project and the random start Norm::random_in_ball. The model is only
// evaluated: weights, their gradients and BatchNorm statistics never change.
//
// Semantics follow torchattacks 3.5.1 (APGD, APGDT), itself AutoAttack's
// reference code (docs/evaluation.md lists what is matched), except that:
//   - random numbers are keyed by the example's content and the seed
//     (restart r uses seed + r), not drawn from a global generator, so an
//     example's result does not depend on its batch or device;
//   - condition 1 counts the first step of a run against the loss at x_0
//     (the reference compares it with an unset entry of its loss history);
//   - APGDT's l2 step uses each example's own step size (the reference uses
//     the first example's for the whole batch);
//   - the l2 direction is g / ||g|| (l2::steepest_ascent); the reference
//     divides by ||g|| + 1e-12, which shrinks the step wherever the gradient
//     is below about 1e-12 (saturated cross-entropy in float) and stalls
//     the attack there;
//   - a broken example returns the first iterate that misclassified it (the
//     reference keeps the last) and leaves the run's batch (at the next
//     checkpoint or multiple of 5 iterations), so the run costs forward and
//     backward passes only for the examples still robust and ends once none
//     is left: the success flags are the same, and since an example's steps
//     and checkpoints depend on its own row only, its result does not depend
//     on when the others leave;
//   - an example the attack does not break returns its best point x_max
//     and its loss, not x: attack_result is the worst case found.
// As in the reference, condition 1 halves when increases <= rho * interval.
// eps is in the model's input units ([0, 1] pixels).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../nn/losses.hpp"
#include "../../core/mode.hpp"
#include "../norms.hpp"
#include "../../core/per_example.hpp"
#include "pga.hpp"  // attack_result
#include "rows.hpp"

namespace opnorm {

template <class T>
struct apgd_options {
  T eps = T(0);
  int iterations = 100;   // N_iter
  int restarts = 1;       // each restart (and each target class) runs on the examples still robust
  T rho = T(0.75);        // condition 1: halve when at most rho of the steps since the last checkpoint improved
  int target_classes = 9; // targeted_dlr: the highest non-true classes at x, at most classes - 1
  bool clip_to_box = true;
  T box_min = T(0), box_max = T(1);
  std::uint64_t seed = 0;
  // Drop an example from its run once an iterate misclassifies it (its
  // result is final then), so later iterations evaluate the model only on
  // the examples still robust: several times cheaper where most examples
  // break early. Results are the same either way (up to the rounding of a
  // GEMM over a smaller batch); off exists so tests can compare the two.
  bool drop_broken = true;
};

/// The checkpoints of an APGD run of N iterations: the iteration counts
/// w_1 < w_2 < ... after which the step size may halve. The paper's
/// p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
/// in the integer form of the reference code: the first interval is
/// max(int(0.22 N), 1) iterations, each next one max(int(0.03 N), 1)
/// shorter, but never shorter than max(int(0.06 N), 1).
inline std::vector<int> apgd_checkpoints(int iterations) {
  std::vector<int> w;
  const double n = static_cast<double>(iterations);
  int interval = std::max(static_cast<int>(0.22 * n), 1);
  const int shrink = std::max(static_cast<int>(0.03 * n), 1);
  const int shortest = std::max(static_cast<int>(0.06 * n), 1);
  for (int at = interval; at <= iterations; at += interval) {
    w.push_back(at);
    interval = std::max(interval - shrink, shortest);
  }
  return w;
}

/// out_i = the class of the rank-th largest logit of row i among the classes
/// other than labels_i (rank 1: the runner-up), ties to the smaller index:
/// APGD-T's target for its rank-th run.
template <class T, class B>
void nth_other_class(const tensor<T, B>& logits, const label_tensor<B>& labels, int rank, label_tensor<B>& out) {
  const index_t n = logits.dim(0), k = logits.example_size();
  if (rank < 1 || rank > k - 1)
    throw std::invalid_argument("opnorm::nth_other_class: rank " + std::to_string(rank) + " among " +
                                std::to_string(k - 1) + " other classes");
  if (labels.size() != n)
    throw std::invalid_argument("opnorm::nth_other_class: " + std::to_string(labels.size()) + " labels for " +
                                std::to_string(n) + " examples");
  out.resize({n});
  const T* z = logits.data();
  const std::int32_t* y = labels.data();
  std::int32_t* o = out.data();
  backend_ops<B>::for_each_index(n, [=] OPNORM_HD(index_t i) {
    const T* zi = z + i * k;
    // rank passes of a selection: each picks the first class that comes
    // after the previous pick in the order (logit descending, index ascending).
    index_t previous = -1;
    for (int r = 0; r < rank; ++r) {
      index_t pick = -1;
      for (index_t j = 0; j < k; ++j) {
        if (j == y[i]) continue;
        if (previous >= 0 && !(zi[j] < zi[previous] || (zi[j] == zi[previous] && j > previous))) continue;
        if (pick < 0 || zi[j] > zi[pick]) pick = j;
      }
      previous = pick;
    }
    o[i] = static_cast<std::int32_t>(previous);
  });
}

/// What an observer sees after each iteration of each run: host copies, made
/// only when an observer is set (tests, progress logs). With drop_broken the
/// rows shrink during a run: an example misclassified by an iterate is listed
/// up to the iteration at which it is dropped (the next checkpoint or
/// multiple of 5), then no more. The sum of examples.size() over a run's
/// records is the number of forward+VJP row evaluations the run made.
template <class T>
struct apgd_iteration {
  int run = 0;        // (target class, restart) runs, counted from 0 in the order they run
  int iteration = 0;  // 0: the random start x_0; then 1 .. iterations
  std::vector<index_t> examples;  // the examples evaluated at this iteration: indices into the attacked batch
  std::vector<T> loss;       // per entry of examples: the loss at the iterate evaluated now
  std::vector<T> best_loss;  // the largest loss so far in this run
  std::vector<T> step_size;  // eta, after this iteration's checkpoint
  std::vector<T> point;      // the iterate the next step starts from (x_max where eta was just halved), row-major
};

template <class Model, class Norm = l2, class Loss = softmax_cross_entropy>
class apgd {
  static_assert(is_norm<Norm>::value, "apgd's Norm must be a norm policy such as l2 or linf");
  static_assert(std::is_same_v<Loss, softmax_cross_entropy> || std::is_same_v<Loss, dlr> ||
                    std::is_same_v<Loss, targeted_dlr>,
                "apgd attacks classifiers with labels: Loss is softmax_cross_entropy (APGD-CE), dlr (APGD-DLR) or "
                "targeted_dlr (APGD-T)");

 public:
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  using tensor_type = tensor<T, B>;
  using flags_type = tensor<std::int32_t, B>;
  using observer_type = std::function<void(const apgd_iteration<T>&)>;
  static constexpr bool targeted = std::is_same_v<Loss, targeted_dlr>;
  /// The momentum weight a of the paper (a = 1 on the first step).
  static constexpr double momentum = 0.75;

  apgd(Model& model, apgd_options<T> options) : model_(model), options_(options) {
    detail::require_real(static_cast<double>(options_.eps), "apgd", "eps", detail::at_least(0));
    detail::require_count(options_.iterations, "apgd", "iterations", 1);
    detail::require_count(options_.restarts, "apgd", "restarts", 1);
    detail::require_real(static_cast<double>(options_.rho), "apgd", "rho", detail::open_closed_interval(0, 1));
    detail::require_count(options_.target_classes, "apgd", "target_classes", 1);
    detail::require_box(options_.clip_to_box, options_.box_min, options_.box_max, "apgd");
  }

  const apgd_options<T>& options() const { return options_; }

  /// Calls f after every iteration of every run (tests, progress logs).
  void observe(observer_type f) { observer_ = std::move(f); }

  /// Attacks every example of x; labels are the true classes. success[i]:
  /// misclassified at x or at some iterate; adversarial[i]: x where
  /// misclassified at x, else the last misclassifying iterate of the first
  /// run that found one, else the best point over all runs; loss[i]: the
  /// attack loss there.
  attack_result<T, B> operator()(const tensor_type& x, const label_tensor<B>& labels) {
    const index_t n = x.dim(0);
    if (labels.size() != n)
      throw std::invalid_argument("opnorm::apgd: " + std::to_string(labels.size()) + " labels for " +
                                  std::to_string(n) + " examples");
    attack_result<T, B> out;
    assign(model_.forward(x, tape_, mode::eval), clean_logits_);
    const index_t classes = clean_logits_.example_size();
    const int target_count = targeted ? static_cast<int>(std::min<index_t>(options_.target_classes, classes - 1)) : 1;

    loss_target(labels, 1, all_targets_);
    Loss::evaluate(clean_logits_, all_targets_, static_cast<tensor_type*>(nullptr), reduction::sum, &loss_);
    out.loss = loss_.to_vector();
    for (index_t i = 0; i < n; ++i) require_finite(out.loss[static_cast<std::size_t>(i)], i);
    const std::vector<index_t> predicted = argmax_rows(clean_logits_);
    const std::vector<std::int32_t> y = labels.to_vector();
    out.success.resize(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) out.success[i] = predicted[i] != y[i];
    assign(x, out.adversarial);
    if (options_.eps == T(0)) return out;  // the identity, exactly

    std::vector<T> best(static_cast<std::size_t>(n), -std::numeric_limits<T>::infinity());
    int run = 0;
    for (int c = 1; c <= target_count; ++c) {
      for (int r = 0; r < options_.restarts; ++r, ++run) {
        std::vector<index_t> active;
        for (index_t i = 0; i < n; ++i)
          if (!out.success[i]) active.push_back(i);
        if (active.empty()) return out;
        rows_ = row_list<B>(active);
        gather_rows(x, rows_, xs_);
        gather_rows(labels, rows_, ys_);
        loss_target(labels, c, all_targets_);
        gather_rows(all_targets_, rows_, targets_);
        single_run(xs_, ys_, targets_, options_.seed + static_cast<std::uint64_t>(r), run, active);

        // A success beats a failure; among failures the larger loss wins.
        const std::vector<std::int32_t> fooled = fooled_.to_vector();
        const std::vector<T> adv_loss = adv_loss_.to_vector(), best_loss = best_loss_.to_vector();
        std::vector<std::int32_t> improved(active.size(), 0);
        for (std::size_t j = 0; j < active.size(); ++j) {
          const auto i = static_cast<std::size_t>(active[j]);
          if (fooled[j]) {
            out.success[i] = 1;
            out.loss[i] = adv_loss[j];
          } else if (best_loss[j] > best[i]) {
            improved[j] = 1;
            best[i] = best_loss[j];
            out.loss[i] = best_loss[j];
          }
        }
        scatter_rows_where(adv_, rows_, fooled_, out.adversarial);
        scatter_rows_where(best_, rows_, flags_type::from_vector({static_cast<index_t>(improved.size())}, improved),
                           out.adversarial);
      }
    }
    return out;
  }

  // ---- one run and its kernels -------------------------------------------
  // nvcc rejects extended lambdas in private member functions, so these are
  // public; they are not part of the interface.

  /// The loss's target for the examples of labels: the labels themselves, or
  /// for targeted_dlr the pairs (label, c-th highest other class at x).
  void loss_target(const label_tensor<B>& labels, int c, label_tensor<B>& target) {
    if constexpr (targeted) {
      nth_other_class(clean_logits_, labels, c, target_class_);
      target = label_pairs(labels, target_class_);
    } else {
      (void)c;
      assign(labels, target);
    }
  }

  /// One APGD run on every row of x; leaves per row of x fooled_, adv_ (the
  /// first misclassifying iterate) with adv_loss_, and best_ (x_max) with
  /// best_loss_. During the run the per-example state holds only the live
  /// rows (live_: their rows in x), the others' results wait in done_*.
  void single_run(const tensor_type& x, const label_tensor<B>& y, const label_tensor<B>& target, std::uint64_t seed,
                  int run, const std::vector<index_t>& examples) {
    const index_t m = x.dim(0), d = x.example_size();
    const T eps = options_.eps;
    assign(x, live_x_);
    assign(y, live_y_);
    assign(target, live_target_);
    live_.resize(static_cast<std::size_t>(m));
    for (index_t j = 0; j < m; ++j) live_[static_cast<std::size_t>(j)] = j;
    live_rows_ = row_list<B>(live_);
    done_fooled_.resize({m});
    done_bad_.resize({m});
    done_adv_loss_.resize({m});
    done_best_loss_.resize({m});
    done_adv_.resize(x.shape());
    done_best_.resize(x.shape());

    // x_0: a uniform point of the ball scaled out to its surface: for l2 a
    // Gaussian direction, for linf U(-1, 1)^d over its largest entry, both
    // times eps (the reference's starts).
    Norm::random_in_ball(x, eps, seed, cur_);
    Norm::norms(cur_, norms_);
    {
      const T* xs = x.data();
      const T* nr = norms_.data();
      T* c = cur_.data();
      backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t k) {
        const T r = nr[k / d];
        c[k] = xs[k] + (r > T(0) ? (eps / r) * c[k] : T(0));
      });
    }
    clip(cur_);
    evaluate(cur_, live_y_, live_target_);
    start_state(m, eps);
    assign(cur_, best_);
    assign(grad_, grad_best_);
    assign(cur_, adv_);
    assign(cur_, prev_);
    notify(run, 0, examples);
    // Broken rows are dropped after x_0, every 5th iteration and at the
    // checkpoints. Each drop costs a count (a reduction and a wait for its
    // result) and, when some broke, one gather per per-example tensor, all
    // O(rows x d): little next to a forward and a VJP, but a wait stalls a
    // device's queue, so not every iteration. Every 5 keeps a broken row's
    // extra evaluations to at most 4, where on a standard model most rows
    // break within the first few iterations; the checkpoints (22, 41, ...
    // for N = 100) add a drop where the count was made anyway before, to end
    // a run whose rows were all broken.
    constexpr int drop_every = 5;
    bool live = !options_.drop_broken || drop_broken_rows() > 0;

    // Each example's schedule is the run's: the checkpoint iterations and
    // their intervals depend on `it` alone, never on which rows are live.
    const std::vector<int> checkpoints = apgd_checkpoints(options_.iterations);
    std::size_t next = 0;
    int last = 0;
    for (int it = 1; live && it <= options_.iterations; ++it) {
      step(live_x_, it == 1 ? T(1) : static_cast<T>(momentum));
      evaluate(cur_, live_y_, live_target_);
      track();
      const bool at_checkpoint = next < checkpoints.size() && it == checkpoints[next];
      if (at_checkpoint) {
        checkpoint(it - last);
        last = it;
        ++next;
      }
      notify(run, it, examples);
      if (options_.drop_broken) {
        if (at_checkpoint || it % drop_every == 0) live = drop_broken_rows() > 0;
      } else if (at_checkpoint) {
        // Every example broken: nothing left to change (their points are
        // kept from the first success). Checked at the checkpoints only, so
        // the count costs one reduction per checkpoint.
        live = !all_fooled(fooled_.size());
      }
    }
    finish_run();

    // A NaN anywhere (input, weights, a gradient) would otherwise leave the
    // attack quietly weaker: a NaN loss never becomes the best. Say so. (A
    // dropped example is not evaluated after its first misclassification,
    // and a NaN there could not weaken its result.)
    const std::int32_t* bad = bad_.data();
    const index_t count = backend_ops<B>::template sum<index_t>(m, [=] OPNORM_HD(index_t i) { return index_t(bad[i] != 0); });
    if (count > 0) {
      const std::vector<std::int32_t> flags = bad_.to_vector();
      for (std::size_t j = 0; j < flags.size(); ++j)
        if (flags[j]) require_finite(std::numeric_limits<T>::quiet_NaN(), examples[j]);
    }
  }

  /// Moves the results of the live rows misclassified by now (fooled_, adv_,
  /// adv_loss_, bad_, and best_ with best_loss_) to done_*, and shrinks every
  /// per-example tensor of the run to the rows still robust. Returns how
  /// many are left.
  index_t drop_broken_rows() {
    const index_t m = fooled_.size();
    const std::int32_t* f = fooled_.data();
    const index_t broken = backend_ops<B>::template sum<index_t>(m, [=] OPNORM_HD(index_t i) { return index_t(f[i] != 0); });
    if (broken == 0) return m;
    save_rows(&fooled_);
    if (broken == m) {
      live_.clear();
      return 0;
    }
    const std::vector<std::int32_t> fooled = fooled_.to_vector();
    std::vector<index_t> keep, live;
    keep.reserve(static_cast<std::size_t>(m - broken));
    live.reserve(static_cast<std::size_t>(m - broken));
    for (std::size_t j = 0; j < fooled.size(); ++j)
      if (!fooled[j]) {
        keep.push_back(static_cast<index_t>(j));
        live.push_back(live_[j]);
      }
    const tensor<index_t, B> rows = row_list<B>(keep);
    // Every tensor that holds a row per live example and lives from one
    // iteration to the next; the others (loss_, mis_, u_, z_, next_, dir_,
    // take_*, halve_, norms_) are rewritten whole before they are read next.
    keep_rows(rows, live_x_, cur_, prev_, best_, grad_best_, grad_, adv_, eta_, best_loss_, prev_loss_,
              best_at_check_, adv_loss_);
    keep_rows(rows, live_y_, live_target_, increases_, reduced_, fooled_, bad_);
    live_ = std::move(live);
    live_rows_ = row_list<B>(live_);
    return m - broken;
  }

  /// done_* = the live rows' results where flags (every live row if null).
  void save_rows(const flags_type* flags) {
    const auto save = [&](const auto& values, auto& done) {
      if (flags) scatter_rows_where(values, live_rows_, *flags, done);
      else scatter_rows(values, live_rows_, done);
    };
    save(fooled_, done_fooled_);
    save(bad_, done_bad_);
    save(adv_, done_adv_);
    save(adv_loss_, done_adv_loss_);
    save(best_, done_best_);
    save(best_loss_, done_best_loss_);
  }

  /// The end of a run: the live rows' results join the dropped ones', and
  /// fooled_, adv_, adv_loss_, best_, best_loss_ and bad_ hold the results
  /// of every row of the run, as operator() reads them.
  void finish_run() {
    if (!live_.empty()) save_rows(nullptr);
    std::swap(fooled_, done_fooled_);
    std::swap(bad_, done_bad_);
    std::swap(adv_, done_adv_);
    std::swap(adv_loss_, done_adv_loss_);
    std::swap(best_, done_best_);
    std::swap(best_loss_, done_best_loss_);
  }

  /// The logits, the per-example loss, its input gradient and the
  /// misclassification flags at `at`: one eval-mode forward, one VJP.
  void evaluate(const tensor_type& at, const label_tensor<B>& y, const label_tensor<B>& target) {
    const auto& logits = model_.forward(at, tape_, mode::eval);
    Loss::evaluate(logits, target, &u_, reduction::sum, &loss_);
    const index_t m = logits.dim(0), k = logits.example_size();
    const T* z = logits.data();
    const std::int32_t* ys = y.data();
    mis_.resize({m});
    std::int32_t* mis = mis_.data();
    // A NaN row predicts no class (detail::argmax_row), so it counts as
    // misclassified; its NaN loss makes the attack throw in any case.
    backend_ops<B>::for_each_index(m, [=] OPNORM_HD(index_t i) {
      mis[i] = detail::argmax_row(z + i * k, k) != ys[i];
    });
    model_.vjp(tape_, u_, &grad_, false);
  }

  /// Per-example state at x_0.
  void start_state(index_t m, T eps) {
    for (tensor_type* t : {&eta_, &best_loss_, &prev_loss_, &best_at_check_, &adv_loss_}) t->resize({m});
    for (flags_type* t : {&increases_, &reduced_, &fooled_, &take_best_, &take_adv_, &halve_, &bad_}) t->resize({m});
    const T* l = loss_.data();
    const std::int32_t* mis = mis_.data();
    T *eta = eta_.data(), *best = best_loss_.data(), *prev = prev_loss_.data(), *at_check = best_at_check_.data(),
      *adv = adv_loss_.data();
    std::int32_t *inc = increases_.data(), *reduced = reduced_.data(), *fooled = fooled_.data(), *bad = bad_.data();
    backend_ops<B>::for_each_index(m, [=] OPNORM_HD(index_t i) {
      eta[i] = T(2) * eps;
      best[i] = prev[i] = at_check[i] = adv[i] = l[i];
      inc[i] = 0;
      reduced[i] = 1;  // no condition 2 at the first checkpoint: nothing to compare with yet
      fooled[i] = mis[i];
      bad[i] = !is_finite(l[i]);
    });
  }

  /// x_k -> x_{k+1} for every row: the gradient step z, then the momentum
  /// step, each projected onto the ball and clipped to the box.
  void step(const tensor_type& x, T a) {
    Norm::steepest_ascent(grad_, dir_);
    const index_t d = x.example_size();
    const T* xs = x.data();
    const T* eta = eta_.data();
    const T* v = dir_.data();
    const T* c = cur_.data();
    const T* p = prev_.data();
    z_.resize(x.shape());
    next_.resize(x.shape());
    T* z = z_.data();
    T* nx = next_.data();
    backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t k) { z[k] = c[k] + eta[k / d] * v[k] - xs[k]; });
    to_feasible(x, z_);
    backend_ops<B>::for_each_index(x.size(), [=] OPNORM_HD(index_t k) {
      nx[k] = c[k] + a * (z[k] - c[k]) + (T(1) - a) * (c[k] - p[k]) - xs[k];
    });
    to_feasible(x, next_);
    std::swap(prev_, cur_);  // x_{k-1} <- x_k
    std::swap(cur_, next_);  // x_k <- x_{k+1}; next_ is scratch again
  }

  /// delta (in place) -> x + P_eps(delta), clipped to the box.
  void to_feasible(const tensor_type& x, tensor_type& delta) {
    Norm::project(delta, options_.eps);
    add_into(x, delta);
    clip(delta);
  }

  void clip(tensor_type& p) {
    if (!options_.clip_to_box) return;
    T* ps = p.data();
    const T lo = options_.box_min, hi = options_.box_max;
    backend_ops<B>::for_each_index(p.size(), [=] OPNORM_HD(index_t i) { ps[i] = ps[i] < lo ? lo : (ps[i] > hi ? hi : ps[i]); });
  }

  /// After evaluating x_{k+1}: success, the best point, and the count of
  /// steps that increased the loss since the last checkpoint.
  bool all_fooled(index_t m) const {
    const std::int32_t* fooled = fooled_.data();
    return backend_ops<B>::template sum<index_t>(m, [=] OPNORM_HD(index_t i) { return index_t(fooled[i] != 0); }) == m;
  }

  void track() {
    const index_t m = loss_.size();
    take_best_.resize({m});
    take_adv_.resize({m});
    const T* l = loss_.data();
    const std::int32_t* mis = mis_.data();
    T *best = best_loss_.data(), *prev = prev_loss_.data(), *adv = adv_loss_.data();
    std::int32_t *inc = increases_.data(), *fooled = fooled_.data(), *take_best = take_best_.data(),
                 *take_adv = take_adv_.data(), *bad = bad_.data();
    backend_ops<B>::for_each_index(m, [=] OPNORM_HD(index_t i) {
      const T li = l[i];
      bad[i] = bad[i] || !is_finite(li);
      // The first misclassified iterate is kept: once an example is broken
      // its result is final, which lets a run stop when all are broken
      // without an example's result depending on its batch.
      take_adv[i] = mis[i] && !fooled[i];
      if (mis[i] && !fooled[i]) {
        fooled[i] = 1;
        adv[i] = li;
      }
      take_best[i] = li > best[i];
      if (li > best[i]) best[i] = li;
      inc[i] += li > prev[i] ? 1 : 0;
      prev[i] = li;
    });
    copy_rows_where(take_best_, cur_, best_);
    copy_rows_where(take_best_, grad_, grad_best_);
    copy_rows_where(take_adv_, cur_, adv_);
  }

  /// The step-size rule at a checkpoint `interval` iterations after the
  /// previous one; a halving example restarts from x_max and its gradient.
  void checkpoint(int interval) {
    const index_t m = loss_.size();
    halve_.resize({m});
    const double threshold = static_cast<double>(interval) * static_cast<double>(options_.rho);
    const T* best = best_loss_.data();
    T *eta = eta_.data(), *at_check = best_at_check_.data();
    std::int32_t *inc = increases_.data(), *reduced = reduced_.data(), *halve = halve_.data();
    backend_ops<B>::for_each_index(m, [=] OPNORM_HD(index_t i) {
      const bool oscillating = static_cast<double>(inc[i]) <= threshold;      // condition 1
      const bool stalled = !reduced[i] && at_check[i] >= best[i];               // condition 2
      const bool h = oscillating || stalled;
      if (h) eta[i] = eta[i] / T(2);
      halve[i] = h;
      reduced[i] = h;
      at_check[i] = best[i];
      inc[i] = 0;
    });
    copy_rows_where(halve_, best_, cur_);
    copy_rows_where(halve_, grad_best_, grad_);
  }

  void notify(int run, int iteration, const std::vector<index_t>& examples) {
    if (!observer_) return;
    apgd_iteration<T> record;
    record.run = run;
    record.iteration = iteration;
    record.examples.reserve(live_.size());
    for (index_t j : live_) record.examples.push_back(examples[static_cast<std::size_t>(j)]);
    record.loss = loss_.to_vector();
    record.best_loss = best_loss_.to_vector();
    record.step_size = eta_.to_vector();
    record.point = cur_.to_vector();
    observer_(record);
  }

  OPNORM_HD static bool is_finite(T v) {
    return v == v && v <= std::numeric_limits<T>::max() && v >= -std::numeric_limits<T>::max();
  }

  static void require_finite(T v, index_t example) {
    if (!std::isfinite(static_cast<double>(v)))
      throw std::runtime_error("opnorm::apgd: the attack loss at example " + std::to_string(example) +
                               " is not finite (a NaN or infinity in the input, the model or a gradient)");
  }

 private:
  Model& model_;
  apgd_options<T> options_;
  observer_type observer_;
  typename Model::tape tape_;
  tensor_type clean_logits_, xs_, cur_, prev_, next_, z_, dir_, best_, adv_, grad_, grad_best_, u_, norms_, loss_,
      eta_, best_loss_, prev_loss_, best_at_check_, adv_loss_;
  label_tensor<B> ys_, targets_, all_targets_, target_class_;
  flags_type mis_, increases_, reduced_, fooled_, take_best_, take_adv_, halve_, bad_;
  tensor<index_t, B> rows_;
  // A run's live rows (drop_broken): their x, labels and targets, their
  // rows in the run's batch (host and backend), and the results of the rows
  // already dropped, run-sized.
  tensor_type live_x_, done_adv_, done_best_, done_adv_loss_, done_best_loss_;
  label_tensor<B> live_y_, live_target_;
  flags_type done_fooled_, done_bad_;
  std::vector<index_t> live_;
  tensor<index_t, B> live_rows_;
};

/// make_apgd<linf, dlr>(model, options): the attack with its types deduced.
/// Loss: softmax_cross_entropy (APGD-CE), dlr (APGD-DLR), targeted_dlr (APGD-T).
template <class Norm = l2, class Loss = softmax_cross_entropy, class Model>
apgd<Model, Norm, Loss> make_apgd(Model& model, apgd_options<typename Model::scalar> options) {
  return apgd<Model, Norm, Loss>(model, options);
}

}  // namespace opnorm
