#pragma once
// Exact input Jacobians of a network, per example, as Eigen matrices
// (outputs x inputs), in eval mode.
//
//   jacobian_by_vjp: one VJP per output (d of them for the whole batch): the
//                    cheap way when outputs are few (10 logits, 784 pixels).
//   jacobian_by_jvp: one JVP per input coordinate: the cheap way when inputs
//                    are few, and an independent check of the other.
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/mode.hpp"
#include "../core/tensor.hpp"

namespace opnorm::analysis {

template <class T>
using matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using column_vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// Named values for the `until` argument of the analysis functions, which
/// study the map x -> a_until (a_0 = x, a_L = logits). They stand for
/// indices that depend on the model's depth L:
///   network_output       a_L, the logits (the map f itself);
///   penultimate_output   a_{L-1}, the input of the last layer (the paper's
///                        phi_{L-1} when the last layer is the final dense).
inline constexpr std::size_t network_output = std::numeric_limits<std::size_t>::max();
inline constexpr std::size_t penultimate_output = network_output - 1;

/// The activation index an `until` argument names for Model, checked.
template <class Model>
std::size_t activation_index(std::size_t until) {
  if (until == network_output) return Model::depth;
  if (until == penultimate_output) return Model::depth - 1;
  if (until > Model::depth)
    throw std::invalid_argument("opnorm::analysis: until = " + std::to_string(until) +
                                " names no activation of a network with " + std::to_string(Model::depth) +
                                " layers (a_0 = input ... a_" + std::to_string(Model::depth) + " = output)");
  return until;
}

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
/// until is an activation index or network_output / penultimate_output.
template <class Model>
std::vector<matrix<typename Model::scalar>> jacobian_by_jvp(Model& model, const typename Model::tensor_type& x,
                                                            std::size_t until = Model::depth) {
  until = activation_index<Model>(until);
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
