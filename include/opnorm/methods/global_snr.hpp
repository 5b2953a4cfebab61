#pragma once
// global_snr: global spectral norm regularization (Yoshida & Miyato 2017),
//
//   l(y, f(x)) + lambda / 2 * sum_W sigma(W)^2,
//
// over every weight matrix W: the ones each layer lists through its
// collect_weight_matrices hook (sequential::weight_matrices), that is dense
// weights (out, in) and conv kernels viewed as (out, in * kh * kw) as
// torch.nn.utils.spectral_norm does. BatchNorm scales are not matrices and
// are left alone.
//
// Each W keeps a persistent left vector u across steps, so one iteration per
// step (the kernel composed as weight_operator, l2, no_step) suffices. The
// penalty's gradient lambda * sigma * u v^T is computed fresh each step from
// that step's u and v and added once: nothing stale is carried over.
#include <map>
#include <string>

#include "../core/state.hpp"
#include "../kernel/power_iteration.hpp"
#include "method.hpp"

namespace opnorm {

template <class T = float, class Backend = backend::cpu>
class global_snr {
 public:
  static constexpr const char* name = "global_snr";
  using kernel = power_iteration<weight_operator, l2, no_step>;

  double lambda = 3e-4;
  int iterations = 1;

  /// Draws a random unit u for each weight matrix of the model (seeded).
  template <class Model>
  explicit global_snr(Model& model, double lambda_ = 3e-4, int iterations_ = 1, std::uint64_t seed = 0)
      : lambda(lambda_), iterations(iterations_) {
    check_options();
    static_assert(std::is_same_v<typename Model::scalar, T> && std::is_same_v<typename Model::backend_type, Backend>,
                  "global_snr<T, Backend> must match the model's scalar type and backend");
    for (auto& p : model.weight_matrices()) {
      tensor<T, Backend> seed_row({1, p.value->dim(0)}, T(0));
      const std::uint64_t key = random::fingerprint(p.name.data(), static_cast<index_t>(p.name.size()));
      tensor<T, Backend> u;
      l2::random_direction(seed_row, random::hash(seed, key, 0), u);  // keyed by seed and parameter name
      u.reshape({p.value->dim(0)});
      left_vectors_.emplace(p.name, std::move(u));
    }
  }

  /// Refuses a NaN, infinite or negative weight and zero iterations.
  void check_options() const {
    detail::require_real(lambda, name, "lambda", detail::at_least(0));
    detail::require_count(iterations, name, "iterations", 1);
  }

  template <class Model>
  batch_result accumulate_gradients(Model& model, typename Model::tape& tape, const typename Model::tensor_type& x,
                                    const label_tensor<Backend>& y) {
    check_options();
    const auto& logits = model.forward(x, tape, mode::train);
    typename Model::tensor_type logit_gradient;
    double loss = softmax_cross_entropy::evaluate(logits, y, &logit_gradient, reduction::mean);
    const index_t correct = count_correct(logits, y);
    model.vjp(tape, logit_gradient, nullptr, true);
    loss += add_penalty_gradients(model);
    return {loss, correct, x.dim(0)};
  }

  /// Runs the weight power iterations and adds lambda * sigma * u v^T to each
  /// weight's gradient; returns the penalty lambda / 2 * sum sigma^2.
  template <class Model>
  double add_penalty_gradients(Model& model) {
    double penalty = 0;
    for (auto& p : model.weight_matrices()) {
      auto found = left_vectors_.find(p.name);
      if (found == left_vectors_.end())
        throw std::invalid_argument("opnorm::global_snr: no persistent vector for weight '" + p.name +
                                    "': the method was built for another model");
      // The kernel iterates on W^T from W's persistent left vector u (one row):
      // v_K is the new left vector and u_K / ||u_K|| the right vector.
      tensor<T, Backend>& u = found->second;
      const index_t rows = p.value->dim(0), cols = p.value->size() / rows;
      u.reshape({1, rows});
      if (origin_.shape() != shape_t{1, rows}) origin_ = tensor<T, Backend>({1, rows}, T(0));
      iteration_options<T> o;
      o.iterations = iterations;
      const auto pairs = kernel{}.run(*p.value, origin_, nullptr, o, ws_, &u);
      assign(pairs.v, u);
      u.reshape({rows});
      const T sigma = pairs.sigma.to_vector()[0];  // one number to the host
      last_sigma_[p.name] = static_cast<double>(sigma);
      penalty += lambda / 2 * static_cast<double>(sigma) * static_cast<double>(sigma);
      // grad (rows x cols) += lambda sigma u v^T with v = u_K / ||u_K||: a
      // rank-one GEMM, the 1 / ||u_K|| folded into its scale.
      const T right_norm = l2_norm_of_row(pairs.u);
      if (right_norm == T(0)) continue;  // W = 0: sigma = 0 and no gradient
      backend_ops<Backend>::gemm(false, false, rows, cols, 1, static_cast<T>(lambda) * sigma / right_norm, u.data(),
                                 1, pairs.u.data(), cols, T(1), p.grad->data(), cols);
    }
    return penalty;
  }

  /// sigma of each weight matrix from the latest step.
  const std::map<std::string, double>& last_sigma() const { return last_sigma_; }

  /// The persistent vectors, for checkpoints ("<param>.u").
  state_list<T, Backend> state() {
    state_list<T, Backend> s;
    for (auto& [name, u] : left_vectors_) s.buffers.push_back({name + ".u", &u, nullptr});
    return s;
  }

 private:
  std::map<std::string, tensor<T, Backend>> left_vectors_;
  std::map<std::string, double> last_sigma_;
  // ||row 0|| of a (1, cols) tensor, on the backend.
  static T l2_norm_of_row(const tensor<T, Backend>& row) {
    tensor<T, Backend> norms;
    l2_norms(row, norms);
    return norms.to_vector()[0];
  }

  typename kernel::template workspace<tensor<T, Backend>> ws_;
  tensor<T, Backend> origin_;  // the (1, rows) point: W^T is linear, so any point would do
};

}  // namespace opnorm
