#pragma once
// Jacobian extraction by linear regression, the paper's appendix A.5: run
// randomly perturbed copies x + z_j of an input through the network, record
// the activation of interest (the logits, or a_until), and fit the affine map
// y = b + W z by least squares.
//
// Two ways to record the outputs (regression_options::activations):
//  * free (default): the network itself at x + z_j. Inside x's linear region
//    (no ReLU or max-pool decision differs from x's for any sample) a ReLU
//    network is exactly affine, so W is the Jacobian there and the fit's
//    residual is rounding; a ball that leaves the region gives a fit that is
//    no Jacobian, and a residual orders of magnitude above rounding that
//    says so. This measures what the network does in the ball.
//  * fixed_at_x: the network "with its activation functions set to fixed
//    values" (A.5's wording): every ReLU mask and max-pool choice frozen at
//    x, which is the affine map a(x) + J z, evaluated with one JVP per sample.
//    Exact for any radius; it reproduces the paper's operator, not a test of
//    the ball.
// The exact extractions in jacobian.hpp are cheaper (n JVPs or d VJPs
// instead of m = 2n samples plus a QR); this one is the paper's procedure.
//
// Choices, and why:
//  * The z_j lie on the l2 sphere of radius r: every sample sits at the
//    largest distance the ball allows, which maximizes the signal (W z ~ r)
//    against the rounding of the recorded outputs (~ machine epsilon |y|).
//  * Default radius r = epsilon^(1/3) (6.1e-6 in double, 4.9e-3 in float).
//    In free mode the error of W from output rounding grows like
//    epsilon |y| / r (about 1e-14 / r relative for fmnist_cnn in double),
//    while linear regions can be small: around a uniform-noise image,
//    fmnist_cnn at initialization has samples crossing ReLU boundaries at
//    r = 1.2e-4 but none at r = 3e-5. The cube root keeps W's rounding near
//    1e-9 in double with a margin below such regions. Float models cannot
//    have both; extract from a double copy of the model.
//  * Default sample count m = 2 n for n inputs: at least n + 1 are needed
//    (centering spends one sample on b, and the n columns of the centred
//    Z (m x n) must be independent). With m = n + 1 the fit interpolates, so
//    its residual is zero whatever the network does and cannot reveal that
//    the ball left the linear region, and a random square Z has a smallest
//    singular value ~ 1/sqrt(n) of its typical one, amplifying rounding
//    n-fold. For m = 2 n the singular values of a random m x n matrix lie in
//    (sqrt(m) -+ sqrt(n)) times a scale (Marchenko-Pastur), so Z's condition
//    number is about (sqrt 2 + 1) / (sqrt 2 - 1) = 5.8; m = 4 n would only
//    bring it to 3 for twice the forward passes.
//  * In free mode the perturbation regressed on is fl(x + z) - x, the
//    displacement the network actually sees, not the drawn z: the two differ
//    by the rounding of x + z (2^-53 |x| per coordinate), which would
//    otherwise enter W as noise of relative size ~ 1e-16 sqrt(n) / r.
//  * The fit is a Householder QR solve on centred data: centering removes b
//    from the system (b = mean(y) - W mean(z)), and QR's error grows with
//    cond(Z), whereas normal equations (an LDLT of Z^T Z) would square it.
//  * All linear algebra runs in double whatever the model's scalar type.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <Eigen/QR>

#include "../core/mode.hpp"
#include "../core/per_example.hpp"
#include "../core/random.hpp"
#include "jacobian.hpp"

namespace opnorm::analysis {

namespace detail {
// A random stream of its own, so regression samples never share draws with
// attacks' random starts or power-iteration directions.
inline constexpr std::uint64_t stream_regression = 0x4e9e5510;
}  // namespace detail

/// epsilon^(1/3) of T: see the header comment.
template <class T>
T default_regression_radius() {
  return static_cast<T>(std::cbrt(static_cast<double>(std::numeric_limits<T>::epsilon())));
}

/// How the outputs at x + z are recorded; see the header comment.
enum class regression_activations {
  free,        // the network itself at x + z
  fixed_at_x,  // the network with every activation decision frozen at x: a(x) + J z
};

template <class T>
struct regression_options {
  T radius = default_regression_radius<T>();  // l2 distance of every sample from x, input units
  index_t samples = 0;                        // perturbed copies per example; 0 means 2 * inputs
  std::size_t until = network_output;         // fit x -> a_until (an index or penultimate_output)
  regression_activations activations = regression_activations::free;
  std::uint64_t seed = 0;
  index_t batch_size = 256;  // perturbed copies per forward pass or JVP
};

/// The affine map fitted around one example: a_until(x + z) ~ offset + weight z.
template <class T>
struct affine_fit {
  matrix<T> weight;         // outputs x inputs: the extracted Jacobian
  column_vector<T> offset;  // the fitted value at z = 0, an estimate of a_until(x)
  /// ||Y_c - Z_c W^T||_F / ||Y_c||_F over the centred samples. When all
  /// samples lie on one affine map (free mode with the ball inside x's
  /// linear region, or fixed mode) it is only rounding: about
  /// epsilon |y| / (r |J|) in free mode (1e-9 for fmnist_cnn at r = 1e-5 in
  /// double), about epsilon in fixed mode. A ball that crosses activation
  /// boundaries gives values orders of magnitude above that.
  double relative_residual = 0;
};

/// The number of samples the options ask for with n inputs, checked.
template <class T>
index_t regression_sample_count(const regression_options<T>& options, index_t inputs) {
  const index_t m = options.samples > 0 ? options.samples : 2 * inputs;
  if (m < inputs + 1)
    throw std::invalid_argument("opnorm::analysis: a regression over " + std::to_string(inputs) +
                                " inputs needs at least " + std::to_string(inputs + 1) + " samples, got " +
                                std::to_string(m));
  return m;
}

/// The perturbations z_j (j = 0..m-1) of example i, as an (m, ...) batch:
/// independent, uniform on the l2 sphere of radius options.radius. Drawn
/// from a stream keyed by x_i's content, so an example gets the same samples
/// whatever batch it sits in.
template <class T, class B>
tensor<T, B> regression_perturbations(const tensor<T, B>& x, index_t example, const regression_options<T>& options) {
  if (example < 0 || example >= x.dim(0))
    throw std::out_of_range("opnorm::analysis: example " + std::to_string(example) + " of a batch of " +
                            std::to_string(x.dim(0)));
  if (!(options.radius > T(0)))
    throw std::invalid_argument("opnorm::analysis: the regression radius must be positive");
  const index_t d = x.example_size();
  const index_t m = regression_sample_count(options, d);
  const std::vector<T> xi = slice_rows(x, example, example + 1).to_vector();
  const std::uint64_t stream = random::mix(random::fingerprint(xi.data(), d) ^ detail::stream_regression);

  std::vector<T> z(static_cast<std::size_t>(m * d));
  std::vector<double> g(static_cast<std::size_t>(d));
  for (index_t j = 0; j < m; ++j) {
    double s = 0;
    for (index_t k = 0; k < d; ++k) {
      g[k] = random::normal(options.seed, stream, static_cast<std::uint64_t>(j * d + k));
      s += g[k] * g[k];
    }
    const double scale = static_cast<double>(options.radius) / std::sqrt(s);
    for (index_t k = 0; k < d; ++k) z[static_cast<std::size_t>(j * d + k)] = static_cast<T>(g[k] * scale);
  }
  shape_t shape = x.shape();
  shape[0] = m;
  return tensor<T, B>::from_vector(shape, z);
}

/// The points x_i + z_j the free-mode regression for example i evaluates.
template <class T, class B>
tensor<T, B> regression_points(const tensor<T, B>& x, index_t example, const regression_options<T>& options) {
  tensor<T, B> points = regression_perturbations(x, example, options);
  const index_t d = x.example_size();
  const T* xi = x.data() + example * d;
  T* p = points.data();
  backend_ops<B>::for_each_index(points.size(), [=] OPNORM_HD(index_t k) { p[k] += xi[k % d]; });
  return points;
}

/// Least-squares fit of y = b + W z to the rows of z (m x n) and y (m x d);
/// both are centred in place.
inline affine_fit<double> fit_affine(matrix<double>& z, matrix<double>& y) {
  const Eigen::RowVectorXd z_mean = z.colwise().mean();
  const Eigen::RowVectorXd y_mean = y.colwise().mean();
  z.rowwise() -= z_mean;
  y.rowwise() -= y_mean;
  const Eigen::HouseholderQR<matrix<double>> qr(z);
  const matrix<double> wt = qr.solve(y);  // n x d
  affine_fit<double> fit;
  const double spread = y.norm();
  fit.relative_residual = spread > 0 ? (y - z * wt).norm() / spread : 0.0;
  fit.weight = wt.transpose();
  fit.offset = (y_mean - z_mean * wt).transpose();
  return fit;
}

namespace detail {

// Rows [begin, end) of y (m x d) from an (rows, d) activation tensor.
template <class T, class B>
void store_rows(const tensor<T, B>& a, index_t begin, index_t end, matrix<double>& y) {
  using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const index_t d = a.example_size();
  const std::vector<T> h = a.to_vector();
  y.middleRows(begin, end - begin) = Eigen::Map<const row_major>(h.data(), end - begin, d).template cast<double>();
}

// Free mode: z = fl(x_i + z_j) - x_i and y = a_until(x_i + z_j).
template <class Model>
void record_free(Model& model, const typename Model::tensor_type& x, index_t i, std::size_t until,
                 const regression_options<typename Model::scalar>& options, matrix<double>& z, matrix<double>& y) {
  using T = typename Model::scalar;
  using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto points = regression_points(x, i, options);
  const index_t m = points.dim(0), d_in = x.example_size();
  const std::vector<T> xi = slice_rows(x, i, i + 1).to_vector();
  const std::vector<T> ph = points.to_vector();
  z = Eigen::Map<const row_major>(ph.data(), m, d_in).template cast<double>();
  z.rowwise() -= Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(xi.data(), d_in).template cast<double>();
  typename Model::tape tape;
  for (index_t begin = 0; begin < m; begin += options.batch_size) {
    const index_t end = std::min(m, begin + options.batch_size);
    const auto& a = model.forward(slice_rows(points, begin, end), tape, mode::eval, until);
    if (y.size() == 0) y.resize(m, a.example_size());
    store_rows(a, begin, end, y);
  }
}

// Fixed mode: y = a_until(x_i) + J z_j, one JVP per sample at a tape holding
// copies of x_i (a JVP's batch must match its tape's); a short last chunk is
// padded with zero perturbations. The sum is formed in double: in T it would
// round J z (of size r |J|) to T's epsilon relative to |a(x)| instead.
template <class Model>
void record_fixed(Model& model, const typename Model::tensor_type& x, index_t i, std::size_t until,
                  const regression_options<typename Model::scalar>& options, matrix<double>& z, matrix<double>& y) {
  using T = typename Model::scalar;
  using B = typename Model::backend_type;
  using tensor_type = typename Model::tensor_type;
  using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const tensor_type perturbations = regression_perturbations(x, i, options);
  const index_t m = perturbations.dim(0), d_in = x.example_size();
  const std::vector<T> zh = perturbations.to_vector();
  z = Eigen::Map<const row_major>(zh.data(), m, d_in).template cast<double>();

  const index_t chunk = std::min(m, options.batch_size);
  shape_t shape = x.shape();
  shape[0] = chunk;
  tensor_type copies(shape), dz(shape, T(0)), dy;
  {
    const T* xi = x.data() + i * d_in;
    T* c = copies.data();
    backend_ops<B>::for_each_index(copies.size(), [=] OPNORM_HD(index_t k) { c[k] = xi[k % d_in]; });
  }
  typename Model::tape tape;
  const std::vector<T> at_x = slice_rows(model.forward(copies, tape, mode::eval, until), 0, 1).to_vector();
  for (index_t begin = 0; begin < m; begin += chunk) {
    const index_t end = std::min(m, begin + chunk);
    dz.set_zero();
    backend_ops<B>::copy(perturbations.data() + begin * d_in, (end - begin) * d_in, dz.data());
    model.jvp(tape, dz, dy, until);
    if (y.size() == 0) y.resize(m, dy.example_size());
    store_rows(slice_rows(dy, 0, end - begin), begin, end, y);
  }
  y.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(at_x.data(), y.cols()).template cast<double>();
}

}  // namespace detail

/// The affine fit of x -> a_until around every example of x (in eval mode).
template <class Model>
std::vector<affine_fit<typename Model::scalar>> fit_affine_maps(
    Model& model, const typename Model::tensor_type& x,
    const regression_options<typename Model::scalar>& options = {}) {
  using T = typename Model::scalar;
  const std::size_t until = activation_index<Model>(options.until);
  if (options.batch_size < 1) throw std::invalid_argument("opnorm::analysis: batch_size must be at least 1");
  regression_sample_count(options, x.example_size());  // checked before any work

  std::vector<affine_fit<T>> fits;
  fits.reserve(static_cast<std::size_t>(x.dim(0)));
  for (index_t i = 0; i < x.dim(0); ++i) {
    matrix<double> z, y;
    if (options.activations == regression_activations::free)
      detail::record_free(model, x, i, until, options, z, y);
    else
      detail::record_fixed(model, x, i, until, options, z, y);
    const affine_fit<double> fit = fit_affine(z, y);
    affine_fit<T> out;
    out.weight = fit.weight.template cast<T>();
    out.offset = fit.offset.template cast<T>();
    out.relative_residual = fit.relative_residual;
    fits.push_back(std::move(out));
  }
  return fits;
}

/// W of the affine fit around every example: the regression-extracted
/// Jacobian of x -> a_until (outputs x inputs), as in the paper's A.5.
template <class Model>
std::vector<matrix<typename Model::scalar>> jacobian_by_regression(
    Model& model, const typename Model::tensor_type& x,
    const regression_options<typename Model::scalar>& options = {}) {
  auto fits = fit_affine_maps(model, x, options);
  std::vector<matrix<typename Model::scalar>> out;
  out.reserve(fits.size());
  for (auto& f : fits) out.push_back(std::move(f.weight));
  return out;
}

}  // namespace opnorm::analysis
