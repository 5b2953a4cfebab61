#pragma once
// Exact input Jacobians of a network, per example, as Eigen matrices
// (outputs x inputs), in eval mode.
//
//   jacobian_by_vjp: one VJP per output (d of them for the whole batch): the
//                    cheap way when outputs are few (10 logits, 784 pixels).
//   jacobian_by_jvp: one JVP per input coordinate: the cheap way when inputs
//                    are few, and an independent check of the other.
#include <vector>

#include <Eigen/Core>

#include "../mode.hpp"
#include "../tensor.hpp"

namespace opnorm::analysis {

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

/// J_f(x_i) for every example i of x, via one VJP per output.
template <class Model>
std::vector<matrix<typename Model::scalar>> jacobian_by_vjp(Model& model, const typename Model::tensor_type& x) {
  using T = typename Model::scalar;
  using tensor_type = typename Model::tensor_type;
  typename Model::tape tape;
  const shape_t out_shape = model.forward(x, tape, mode::eval).shape();
  const index_t n = x.dim(0), d_in = x.example_size(), d_out = shape_size(out_shape) / n;
  std::vector<matrix<T>> jac(static_cast<std::size_t>(n), matrix<T>(d_out, d_in));
  tensor_type u, g;
  std::vector<T> basis(static_cast<std::size_t>(n * d_out));
  for (index_t j = 0; j < d_out; ++j) {
    std::fill(basis.begin(), basis.end(), T(0));
    for (index_t i = 0; i < n; ++i) basis[static_cast<std::size_t>(i * d_out + j)] = T(1);
    u = tensor_type::from_vector(out_shape, basis);
    model.vjp(tape, u, &g, false);
    const std::vector<T> gh = g.to_vector();
    for (index_t i = 0; i < n; ++i)
      for (index_t k = 0; k < d_in; ++k) jac[static_cast<std::size_t>(i)](j, k) = gh[static_cast<std::size_t>(i * d_in + k)];
  }
  return jac;
}

/// J of x -> a_until for every example, via one JVP per input coordinate.
template <class Model>
std::vector<matrix<typename Model::scalar>> jacobian_by_jvp(Model& model, const typename Model::tensor_type& x,
                                                            std::size_t until = Model::depth) {
  using T = typename Model::scalar;
  using tensor_type = typename Model::tensor_type;
  typename Model::tape tape;
  model.forward(x, tape, mode::eval, until);
  const index_t n = x.dim(0), d_in = x.example_size();
  tensor_type dx, dy;
  std::vector<T> basis(static_cast<std::size_t>(x.size()));
  std::vector<matrix<T>> jac(static_cast<std::size_t>(n));
  for (index_t k = 0; k < d_in; ++k) {
    std::fill(basis.begin(), basis.end(), T(0));
    for (index_t i = 0; i < n; ++i) basis[static_cast<std::size_t>(i * d_in + k)] = T(1);
    dx = tensor_type::from_vector(x.shape(), basis);
    model.jvp(tape, dx, dy, until);
    const index_t d_out = dy.example_size();
    const std::vector<T> yh = dy.to_vector();
    for (index_t i = 0; i < n; ++i) {
      auto& J = jac[static_cast<std::size_t>(i)];
      if (J.size() == 0) J.resize(d_out, d_in);
      for (index_t j = 0; j < d_out; ++j) J(j, k) = yh[static_cast<std::size_t>(i * d_out + j)];
    }
  }
  return jac;
}

}  // namespace opnorm::analysis
