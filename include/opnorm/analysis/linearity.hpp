#pragma once
// How far from x the network stays linear (paper §5.3, Figure 2):
//
//   left:  deviation from linearity  ||phi(x + z) - phi(x) - J_phi(x) z||_2
//          of phi = x -> a_{L-1} (the input of the final dense layer);
//   right: sigma_max(J_f(x + z)), the largest singular value of the logits'
//          Jacobian at the displaced point,
//
// both as functions of the distance ||z|| = r, along random directions and
// along adversarial ones (the direction in which the linear approximation
// holds the least). J_phi(x) z is one JVP at x; no Jacobian is formed.
//
// Choices, and why:
//  * z is the displacement the network actually sees, fl(x + z) - x: for a
//    linear network the deviation is then zero up to the rounding of phi
//    itself, not of the input.
//  * Along a random direction, each example keeps one direction (drawn by
//    Norm::random_direction: Gaussian for l2, random signs for linf) for all
//    radii, so each example's curve is a walk along one ray.
//  * Along adversarial directions the default re-attacks at every radius:
//    the paper plots "adversarial perturbations z of magnitude ||z||", i.e.
//    the PGA perturbation of strength r, as in Figure 3 (right). Its
//    direction delta / ||delta|| is then scaled to exactly r, so every sample
//    of a curve sits at the same distance (PGA ends on the sphere unless its
//    box clip or a zero gradient stopped it short; the probe x + z itself is
//    not clipped to the box, like the random one). The alternative,
//    attack_at_largest_radius, attacks once at the largest radius and walks
//    along that one ray: cheaper, and a single ray per example, but at small
//    radii it probes a direction chosen far away.
//  * sigma_max comes from the exact-JVP power method (power_iteration with
//    jacobian_operator<exact_jvp>) started, at every radius, from the same
//    random direction per example, so on a linear network the iterates, and
//    sigma, are the same at every radius.
//  * Radii are measured in Norm (l2 by default; linf for the l_inf figures);
//    the deviation and sigma_max are always l2 quantities, as in the paper.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../kernel/attacks.hpp"
#include "../kernel/power_iteration.hpp"
#include "jacobian.hpp"
#include "statistics.hpp"

namespace opnorm::analysis {

template <class T>
struct distance_profile_options {
  std::vector<T> radii;                    // distances ||z|| in the Norm, input units
  std::size_t until = penultimate_output;  // phi = x -> a_until for the deviation
  // Power-method steps for sigma_max(J_f(x + z)); 0 skips it. The estimate
  // never exceeds sigma_1 and its error shrinks like (sigma_2 / sigma_1)^(2k):
  // raise this where the gap is small.
  int power_iterations = 50;
  std::uint64_t seed = 0;                  // random directions and power-method starts
};

enum class adversarial_direction {
  attack_at_each_radius,    // the PGA perturbation of strength r, for every r (default)
  attack_at_largest_radius  // one PGA attack at the largest r; its direction for every r
};

/// Curve samples over the radii: deviation[r][i] and sigma_max[r][i] for
/// radius radii[r] and example i (sigma_max empty when not asked for).
/// directions[r] holds the unit directions d (n, ...) walked at radius r, so
/// the probe points x + radii[r] d can be revisited.
template <class T, class B = backend::cpu>
struct distance_profile {
  std::vector<T> radii;
  curve_samples deviation;
  curve_samples sigma_max;
  std::vector<tensor<T, B>> directions;
};

/// ||phi(x + z) - phi(x) - J_phi(x) z||_2 per example, phi = x -> a_until,
/// with one forward pass at x, one at x + z and one JVP.
template <class Model>
std::vector<double> deviation_from_linearity(Model& model, const typename Model::tensor_type& x,
                                             const typename Model::tensor_type& z,
                                             std::size_t until = penultimate_output);

/// sigma_max(J_f(p_i)) for every point p_i of the batch by `iterations` steps
/// of the exact-JVP power method, started from start (a (n, ...) batch of
/// directions) or, when null, from l2::random_direction(points, seed).
template <class Model>
std::vector<double> largest_singular_values(Model& model, const typename Model::tensor_type& points, int iterations,
                                            const typename Model::tensor_type* start = nullptr,
                                            std::uint64_t seed = 0) {
  iteration_options<typename Model::scalar> o;
  o.iterations = iterations;
  o.seed = seed;
  using power_method = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>;
  typename power_method::template workspace<Model> ws;
  const auto pairs = power_method{}.run(model, points, nullptr, o, ws, start);
  const auto sigma = pairs.sigma.to_vector();
  return std::vector<double>(sigma.begin(), sigma.end());
}

/// delta_i / ||delta_i|| in Norm, per example; a zero row stays zero.
template <class Norm, class T, class B>
void unit_directions(const tensor<T, B>& delta, tensor<T, B>& out) {
  tensor<T, B> norms;
  Norm::norms(delta, norms);
  out.resize(delta.shape());
  const index_t d = delta.example_size();
  const T* ds = delta.data();
  const T* ns = norms.data();
  T* os = out.data();
  backend_ops<B>::for_each_index(delta.size(), [=] OPNORM_HD(index_t k) {
    const T length = ns[k / d];
    os[k] = length > T(0) ? ds[k] / length : T(0);
  });
}

namespace detail {

// Distinct seeds for the random directions and the power-method starts, so
// that a random probe direction is never also the power method's start.
inline std::uint64_t direction_seed(std::uint64_t seed) { return random::hash(seed, 0x11e4, 1); }
inline std::uint64_t power_start_seed(std::uint64_t seed) { return random::hash(seed, 0x11e4, 2); }

// The deviation at x + z, given a tape already run at x up to `until`.
template <class Model>
std::vector<double> deviation_at(Model& model, typename Model::tape& at_x, const typename Model::tensor_type& x,
                                 const typename Model::tensor_type& point, std::size_t until) {
  using tensor_type = typename Model::tensor_type;
  tensor_type displacement, linear_change, residual, norms;
  subtract(point, x, displacement);  // fl(x + z) - x, what the network sees
  model.jvp(at_x, displacement, linear_change, until);
  typename Model::tape at_point;
  subtract(model.forward(point, at_point, mode::eval, until), at_x.activations[until], residual);
  subtract(residual, linear_change, residual);
  l2_norms(residual, norms);
  const auto h = norms.to_vector();
  return std::vector<double>(h.begin(), h.end());
}

// One profile: direction_for(r) gives the (n, ...) unit directions to walk at
// radius index r.
template <class Model, class DirectionFor>
distance_profile<typename Model::scalar, typename Model::backend_type> profile(Model& model, const typename Model::tensor_type& x,
                                                 const distance_profile_options<typename Model::scalar>& options,
                                                 DirectionFor&& direction_for) {
  using T = typename Model::scalar;
  using tensor_type = typename Model::tensor_type;
  const std::size_t until = activation_index<Model>(options.until);
  if (options.power_iterations < 0) throw std::invalid_argument("opnorm::analysis: power_iterations must not be negative");
  for (T r : options.radii)
    if (!(r >= T(0))) throw std::invalid_argument("opnorm::analysis: radii must be non-negative");

  distance_profile<T, typename Model::backend_type> out;
  out.radii = options.radii;
  typename Model::tape at_x;
  model.forward(x, at_x, mode::eval, until);
  tensor_type start;
  if (options.power_iterations > 0) l2::random_direction(x, power_start_seed(options.seed), start);

  tensor_type point;
  for (std::size_t k = 0; k < options.radii.size(); ++k) {
    const tensor_type& direction = direction_for(k);
    assign(x, point);
    axpby(options.radii[k], direction, T(1), point);  // x + r d
    out.deviation.push_back(deviation_at(model, at_x, x, point, until));
    out.directions.push_back(direction);
    if (options.power_iterations > 0)
      out.sigma_max.push_back(largest_singular_values(model, point, options.power_iterations, &start));
  }
  return out;
}

}  // namespace detail

template <class Model>
std::vector<double> deviation_from_linearity(Model& model, const typename Model::tensor_type& x,
                                             const typename Model::tensor_type& z, std::size_t until) {
  if (!same_shape(x, z))
    throw std::invalid_argument("opnorm::analysis::deviation_from_linearity: x " + shape_string(x.shape()) +
                                " and z " + shape_string(z.shape()) + " differ in shape");
  until = activation_index<Model>(until);
  typename Model::tape at_x;
  model.forward(x, at_x, mode::eval, until);
  typename Model::tensor_type point;
  assign(x, point);
  add_into(z, point);
  return detail::deviation_at(model, at_x, x, point, until);
}

/// Figure 2, random curves: deviation from linearity and sigma_max at
/// x + r d_i for one random unit direction d_i (in Norm) per example.
template <class Norm = l2, class Model>
distance_profile<typename Model::scalar, typename Model::backend_type> profile_along_random_directions(
    Model& model, const typename Model::tensor_type& x,
    const distance_profile_options<typename Model::scalar>& options) {
  typename Model::tensor_type direction;
  Norm::random_direction(x, detail::direction_seed(options.seed), direction);
  return detail::profile(model, x, options, [&](std::size_t) -> const typename Model::tensor_type& { return direction; });
}

/// Figure 2, adversarial curves: deviation from linearity and sigma_max at
/// x + r d_i where d_i is the direction of the PGA perturbation (in Norm,
/// with the given attack options; attack.eps is replaced by the radius).
template <class Norm = l2, class Model>
distance_profile<typename Model::scalar, typename Model::backend_type> profile_along_adversarial_directions(
    Model& model, const typename Model::tensor_type& x, const label_tensor<typename Model::backend_type>& labels,
    attack_options<typename Model::scalar> attack, const distance_profile_options<typename Model::scalar>& options,
    adversarial_direction which = adversarial_direction::attack_at_each_radius) {
  using T = typename Model::scalar;
  using tensor_type = typename Model::tensor_type;
  tensor_type delta, direction;
  auto attack_at = [&](T eps) {
    attack.eps = eps;
    auto result = make_pga<Norm>(model, attack)(x, labels);
    subtract(result.adversarial, x, delta);
    unit_directions<Norm>(delta, direction);
  };
  if (which == adversarial_direction::attack_at_largest_radius && !options.radii.empty())
    attack_at(*std::max_element(options.radii.begin(), options.radii.end()));
  return detail::profile(model, x, options, [&](std::size_t k) -> const tensor_type& {
    if (which == adversarial_direction::attack_at_each_radius) attack_at(options.radii[k]);
    return direction;
  });
}

}  // namespace opnorm::analysis
