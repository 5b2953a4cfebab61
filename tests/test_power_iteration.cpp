// The power-iteration kernel against exact linear algebra, in double, on
// every backend: sigma and v against a full SVD of the exact Jacobian of
// fmnist_cnn, the weight operator against the SVD of the reshaped kernel,
// and Theorem 1 (l2-PGA with projected_step against the exact power method).
#include "gradient_check.hpp"

#include <type_traits>
#include <utility>

#include <Eigen/SVD>

#include <opnorm/analysis/jacobian.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/kernel/power_iteration.hpp>

using namespace opnorm;
using namespace opnorm::testing;

namespace {

template <class B>
using net_d = fmnist_cnn<double, B>;

// A trained-like state for BatchNorm (non-trivial running statistics) so the
// eval-mode Jacobian is not the identity-normalized one.
template <class B>
net_d<B> make_net(std::uint64_t seed) {
  net_d<B> net = make_fmnist_cnn<double, B>(seed);
  std::mt19937_64 rng(seed + 100);
  tensor<double, B> warmup = random_tensor<B>({32, 1, 28, 28}, rng, 0.0, 1.0);
  typename net_d<B>::tape t;
  net.forward(warmup, t, mode::train);
  return net;
}

struct top_pair {
  double sigma, sigma2;
  Eigen::VectorXd v;
};

top_pair svd_top(const analysis::matrix<double>& J) {
  Eigen::JacobiSVD<analysis::matrix<double>> svd(J, Eigen::ComputeThinV);
  return {svd.singularValues()(0), svd.singularValues()(1), svd.matrixV().col(0)};
}

// |cos| between a and the a.size() entries of b starting at offset; b comes
// from a tensor's to_vector(), so nothing here reads backend memory.
double abs_cos(const Eigen::VectorXd& a, const std::vector<double>& b, std::size_t offset = 0) {
  REQUIRE(offset + static_cast<std::size_t>(a.size()) <= b.size());
  const Eigen::Map<const Eigen::VectorXd> bm(b.data() + offset, a.size());
  return std::abs(a.dot(bm)) / (a.norm() * bm.norm());
}

// Calls f(I, layer I) for every layer of a sequential network.
template <class Net, class F, std::size_t... I>
void for_each_layer(const Net& net, F&& f, std::index_sequence<I...>) {
  (f(I, net.template layer<I>()), ...);
}

struct pool_layer {
  std::size_t index;  // the layer's input is the tape's activations[index]
  index_t kernel, stride;
};

// What fixes the linear piece of fmnist_cnn around a point: the sign (-1, 0
// or +1) of every ReLU input, and the input element every max-pool window
// selects. Where both agree with those at x, f is the same affine map as at
// x (conv, BatchNorm in eval mode, dense and standardize are affine), and the
// set of such points is convex (linear inequalities in the input), so f is
// affine on the segment between x and any of them too.
struct activation_cell {
  std::vector<std::vector<int>> relu_signs;      // per ReLU layer
  std::vector<std::vector<index_t>> pool_picks;  // per max-pool layer, per window: input offset
};

// The first maximum of each window in row-major window order: the tie rule
// of max_pool2d (and PyTorch), recomputed here from the layer's input
// rather than read from the layer's own record of it.
std::vector<index_t> window_argmax(const std::vector<double>& a, const shape_t& shape, index_t k, index_t stride) {
  const index_t planes = shape[0] * shape[1], H = shape[2], W = shape[3];
  const index_t Ho = (H - k) / stride + 1, Wo = (W - k) / stride + 1;
  std::vector<index_t> picks;
  picks.reserve(static_cast<std::size_t>(planes * Ho * Wo));
  for (index_t p = 0; p < planes; ++p)
    for (index_t oh = 0; oh < Ho; ++oh)
      for (index_t ow = 0; ow < Wo; ++ow) {
        index_t best = p * H * W + oh * stride * W + ow * stride;
        for (index_t i = 0; i < k; ++i)
          for (index_t j = 0; j < k; ++j) {
            const index_t at = p * H * W + (oh * stride + i) * W + ow * stride + j;
            if (a[static_cast<std::size_t>(at)] > a[static_cast<std::size_t>(best)]) best = at;
          }
        picks.push_back(best);
      }
  return picks;
}

template <class Net>
activation_cell cell_of(Net& net, const typename Net::tensor_type& point, const std::vector<std::size_t>& relus,
                        const std::vector<pool_layer>& pools) {
  typename Net::tape t;
  net.forward(point, t, mode::eval);
  activation_cell c;
  for (const std::size_t l : relus) {
    std::vector<int> signs;
    for (const double a : t.activations[l].to_vector()) signs.push_back((a > 0) - (a < 0));
    c.relu_signs.push_back(std::move(signs));
  }
  for (const pool_layer& q : pools)
    c.pool_picks.push_back(
        window_argmax(t.activations[q.index].to_vector(), t.activations[q.index].shape(), q.kernel, q.stride));
  return c;
}

// Entries where two equally long vectors differ.
template <class V>
std::size_t mismatches(const std::vector<V>& a, const std::vector<V>& b) {
  REQUIRE(a.size() == b.size());
  std::size_t count = 0;
  for (std::size_t j = 0; j < a.size(); ++j) count += a[j] != b[j];
  return count;
}

}  // namespace

TEST_CASE_TEMPLATE("exact-JVP power iteration matches the SVD of the exact Jacobian of fmnist_cnn", B,
                   OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(11);
  std::mt19937_64 rng(5);
  const tensor<double, B> x = random_tensor<B>({3, 1, 28, 28}, rng, 0.0, 1.0);
  const auto J = analysis::jacobian_by_vjp(net, x);

  iteration_options<double> o;
  o.iterations = 500;
  o.seed = 3;
  const auto pairs = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}.run(net, x, nullptr, o);
  const std::vector<double> sigma = pairs.sigma.to_vector(), v = pairs.v.to_vector();
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    const top_pair top = svd_top(J[i]);
    REQUIRE(top.sigma2 < 0.95 * top.sigma);  // a spectral gap the iteration can resolve in 500 steps
    CHECK(std::abs(sigma[i] - top.sigma) / top.sigma < 1e-8);
    CHECK(abs_cos(top.v, v, i * 784) > 1 - 1e-8);
  }
}

TEST_CASE_TEMPLATE("the two exact Jacobian extractions agree", B, OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(12);
  std::mt19937_64 rng(6);
  const tensor<double, B> x = random_tensor<B>({2, 1, 28, 28}, rng, 0.0, 1.0);
  const auto by_vjp = analysis::jacobian_by_vjp(net, x);
  const auto by_jvp = analysis::jacobian_by_jvp(net, x);
  for (std::size_t i = 0; i < 2; ++i) CHECK((by_vjp[i] - by_jvp[i]).norm() / by_vjp[i].norm() < 1e-12);
}

TEST_CASE_TEMPLATE("sum-of-squares (finite-difference) power iteration matches the SVD for small eps", B,
                   OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(13);
  std::mt19937_64 rng(7);
  const tensor<double, B> x = random_tensor<B>({2, 1, 28, 28}, rng, 0.0, 1.0);
  const auto J = analysis::jacobian_by_vjp(net, x);
  iteration_options<double> o;
  o.iterations = 500;
  o.eps = 1e-6;
  const auto pairs = power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>{}.run(net, x, nullptr, o);
  const std::vector<double> sigma = pairs.sigma.to_vector(), v = pairs.v.to_vector();
  for (std::size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    const top_pair top = svd_top(J[i]);
    // Finite differences in double carry ~1e-16/eps relative rounding.
    CHECK(std::abs(sigma[i] - top.sigma) / top.sigma < 1e-7);
    CHECK(abs_cos(top.v, v, i * 784) > 1 - 1e-7);
  }
}

TEST_CASE_TEMPLATE("Theorem 1: PGA with the sum-of-squares loss and alpha -> infinity is the power method", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = net_d<B>;
  using tensor_t = tensor<double, B>;
  using Vec = Eigen::VectorXd;
  net_t net = make_net<B>(14);
  std::mt19937_64 rng(8);
  // Two examples and eight iterations: enough to see the iterates move from
  // a random start towards the top singular vector (sigma_2 / sigma_1 is
  // 0.94 and 0.98 here, so they are far from converged), and cheap (under a
  // second) next to the 500-iteration SVD tests in this program.
  const index_t n = 2, d = 784, K = 8;
  const tensor_t x = random_tensor<B>({n, 1, 28, 28}, rng, 0.0, 1.0);
  const double eps = 1e-5;   // small enough that the iterates stay in x's cell (checked below)
  const double alpha = 1e9;  // the theorem's alpha -> infinity

  // l2-PGA (Eq. 11/12) on l_adv = 1/2 ||f(x*) - f(x)||^2, the real projected
  // step x_k = Proj_eps(x_{k-1} + alpha v_k - x) + x, no box clip.
  iteration_options<double> o;
  o.iterations = K;
  o.eps = eps;
  o.alpha = alpha;
  o.seed = 21;
  using pga = power_iteration<jacobian_operator<loss_gradient<sum_of_squares>>, l2, projected_step>;
  using power_method = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>;

  // The paper's PGA start, x_0 ~ U(B_eps(x)) (Eq. 11), drawn by the call PGA's
  // run makes. Its proof (Eq. 27-28) needs x_0 - x = s v_0 for the power
  // method's start v_0 (s only scales u_1, which the normalization of v_1
  // removes), so the power method starts at v_0 = (x_0 - x) / ||x_0 - x||:
  // a uniformly random unit vector, the paper's "random vector" for Eq. 7.
  tensor_t x0;
  projected_step::template start<l2>(x, tensor_t{}, o, x0);
  const std::vector<double> xh = x.to_vector(), x0h = x0.to_vector();
  std::vector<double> v0h(xh.size()), r0(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const Vec disp = Eigen::Map<const Vec>(x0h.data() + i * d, d) - Eigen::Map<const Vec>(xh.data() + i * d, d);
    r0[static_cast<std::size_t>(i)] = disp.norm();
    REQUIRE(r0[static_cast<std::size_t>(i)] > 0);
    REQUIRE(r0[static_cast<std::size_t>(i)] <= eps);
    Eigen::Map<Vec>(v0h.data() + i * d, d) = disp / r0[static_cast<std::size_t>(i)];
  }
  const tensor_t v0 = tensor_t::from_vector(x.shape(), v0h);

  // PGA gets no v_0: projected_step ignores it and starts at its own draw.
  std::vector<std::vector<double>> pga_v, pga_u, pga_x{x0h}, pm_v{v0h}, pm_u;
  std::vector<tensor_t> points{x0};
  typename pga::template workspace<net_t> w_pga;
  typename power_method::template workspace<net_t> w_pm;
  pga{}.run(net, x, nullptr, o, w_pga, nullptr, [&](int, const tensor_t& v, const tensor_t& u, const tensor_t& p) {
    pga_v.push_back(v.to_vector());
    pga_u.push_back(u.to_vector());
    pga_x.push_back(p.to_vector());
    points.push_back(p);
  });
  power_method{}.run(net, x, nullptr, o, w_pm, &v0, [&](int, const tensor_t& v, const tensor_t& u, const tensor_t&) {
    pm_v.push_back(v.to_vector());
    pm_u.push_back(u.to_vector());
  });
  REQUIRE(pga_v.size() == static_cast<std::size_t>(K));
  REQUIRE(pm_v.size() == static_cast<std::size_t>(K) + 1);

  // The hypothesis: every point PGA evaluates f or J_f at (x_0 ... x_{K-1};
  // x_K too) lies in x's cell. Each ReLU's input has the same sign, exact
  // zeros included (relu's derivative at 0 is 0), and each max-pool window
  // selects the same element as at x.
  std::vector<std::size_t> relus;
  std::vector<pool_layer> pools;
  for_each_layer(
      net,
      [&](std::size_t i, const auto& layer) {
        using L = std::decay_t<decltype(layer)>;
        if constexpr (std::is_same_v<L, relu<double, B>>) relus.push_back(i);
        if constexpr (std::is_same_v<L, max_pool2d<double, B>>)
          pools.push_back({i, layer.kernel_size(), layer.stride()});
      },
      std::make_index_sequence<net_t::depth>{});
  REQUIRE(relus.size() == 5);  // fmnist_cnn: four conv blocks and the hidden dense layer
  REQUIRE(pools.size() == 2);
  const activation_cell at_x = cell_of(net, x, relus, pools);
  bool in_cell = true;
  for (std::size_t m = 0; m < points.size(); ++m) {
    CAPTURE(m);
    const activation_cell at_p = cell_of(net, points[m], relus, pools);
    for (std::size_t l = 0; l < relus.size(); ++l) {
      CAPTURE(relus[l]);
      const std::size_t flips = mismatches(at_x.relu_signs[l], at_p.relu_signs[l]);
      CHECK(flips == 0);
      in_cell = in_cell && flips == 0;
    }
    for (std::size_t l = 0; l < pools.size(); ++l) {
      CAPTURE(pools[l].index);
      const std::size_t moved = mismatches(at_x.pool_picks[l], at_p.pool_picks[l]);
      CHECK(moved == 0);
      in_cell = in_cell && moved == 0;
    }
  }
  REQUIRE(in_cell);

  // The conclusion, per example i and step k, against J = J_f(x) extracted
  // exactly (sigma_1 = ||J||, A = J^T J). Besides the 2 eps^2 / alpha a
  // finite alpha leaves, only rounding separates PGA from the power method;
  // with u = 2^-53:
  //
  // P, the projection (Lemma 1). With w = x_{k-1} - x (||w|| <= eps),
  //   Proj_eps(alpha v + w) = eps (v + w/alpha) / ||v + w/alpha||, which is
  //   within 2 eps ||w|| / alpha <= 2 eps^2 / alpha of eps v: the O(eps/alpha)
  //   (relative to eps) the finite alpha leaves. In floating point,
  //   alpha v + w carries 3u relative error, its norm (d/2 + 2)u, the
  //   scaling 2u, and v itself has norm 1 within (d/2 + 3)u: under
  //   eps (d + 12)u together. Storing x + delta adds u |x + delta| per entry,
  //   forming x_k - x and eps v_k here 2u eps. So
  //     ||(x_k - x) - eps v_k|| <= P = 2 eps^2/alpha + u ||x|| + (d + 16) u eps,
  //   which also bounds x_0 - x against r_0 v_0 (v_0 is its normalization).
  // F, the forward passes. Each evaluation of f rounds its layers' outputs;
  //   that error reaches the logits through at most the network's gain
  //   sigma_1 from the input scale ||x||, plus the last rounding of the
  //   logits, u ||f(x)||. Two evaluations: F = 2u (sigma_1 ||x|| + ||f(x)||),
  //   one unit of each scale per evaluation, as the finite-difference tests
  //   model it. Measured as ||u_k - J (x_{k-1} - x)|| at 128 points (16
  //   examples, 8 steps) it stayed between 0.3 and 1.2 u sigma_1 ||x||.
  // Forward pass (Eq. 25-28): in the cell f is affine, so with s = ||x_{k-1} - x||
  //   (r_0 for k = 1, eps after) u_k = f(x_{k-1}) - f(x) = J (x_{k-1} - x), and
  //     ||u_k - s J v^pm_{k-1}|| <= sigma_1 P + F + s sigma_1 E_{k-1} + arithmetic.
  // Backward pass (Eq. 29): v_k = n(J^T u_k) with n(a) = a / ||a||, whose
  //   derivative is (I - n n^T) / ||a||. To first order (the errors are
  //   1e-9, their squares far below everything else):
  //     v^pga_k = n(s A v^pga_{k-1} + J^T delta),  ||delta|| <= sigma_1 P + F
  //     Lipschitz of v -> n(A v) near v^pm_{k-1}: L_k = sigma_1^2 / ||A v^pm_{k-1}||
  //     E_k = L_k E_{k-1} + sigma_1 (sigma_1 P + F) / (s ||A v^pm_{k-1}||) + 2 m u L_k,  E_0 = 0,
  //   where 2 m u L_k (m = 3136, the longest dot product in fmnist_cnn) covers
  //   both runs' own JVP, VJP and normalization roundings ("arithmetic"),
  //   about three orders of magnitude below the finite-difference term.
  // E_k grows while v_k is far from the top singular vector (||A v|| small)
  // and is hardly damped with sigma_2 / sigma_1 near 1: that is how errors
  // propagate in the power method, computed from J, not a safety factor.
  const double u = std::ldexp(1.0, -53);
  const double m = 3136;
  const auto J = analysis::jacobian_by_vjp(net, x);
  typename net_t::tape clean;
  const std::vector<double> fx = net.forward(x, clean, mode::eval).to_vector();
  const index_t outputs = static_cast<index_t>(fx.size()) / n;
  for (index_t i = 0; i < n; ++i) {
    CAPTURE(i);
    const analysis::matrix<double>& Ji = J[static_cast<std::size_t>(i)];
    auto seg = [&](const std::vector<double>& a, index_t len) {
      return Eigen::Map<const Vec>(a.data() + i * len, len);
    };
    const double sigma1 = Eigen::JacobiSVD<analysis::matrix<double>>(Ji).singularValues()(0);
    REQUIRE(sigma1 > 0);
    const double x_norm = seg(xh, d).norm(), f_norm = seg(fx, outputs).norm();
    const double P = 2 * eps * eps / alpha + u * x_norm + (d + 16) * u * eps;
    const double F = 2 * u * (sigma1 * x_norm + f_norm);
    double E = 0;  // bound on ||v^pga_{k-1} - v^pm_{k-1}||
    for (index_t k = 1; k <= K; ++k) {
      CAPTURE(k);
      const std::size_t kk = static_cast<std::size_t>(k);
      const double s = k == 1 ? r0[static_cast<std::size_t>(i)] : eps;
      const Vec Av = Ji.transpose() * (Ji * seg(pm_v[kk - 1], d));
      const double L = sigma1 * sigma1 / Av.norm();

      // Forward pass: PGA's loss gradient f(x_{k-1}) - f(x) is s J v_{k-1}.
      const double du = (seg(pga_u[kk - 1], outputs) - s * seg(pm_u[kk - 1], outputs)).norm();
      CAPTURE(du);
      CHECK(du <= sigma1 * P + F + s * sigma1 * (E + 2 * m * u));

      // Backward pass: PGA's v_k is the power method's v_k.
      E = L * E + sigma1 * (sigma1 * P + F) / (s * Av.norm()) + 2 * m * u * L;
      const double e = (seg(pga_v[kk - 1], d) - seg(pm_v[kk], d)).norm();
      CAPTURE(e);
      CAPTURE(E);
      CHECK(e <= E);

      // Projection (Lemma 1): x_k = x + eps v_k up to O(eps^2 / alpha) and rounding.
      const double dp = ((seg(pga_x[kk], d) - seg(xh, d)) - eps * seg(pga_v[kk - 1], d)).norm();
      CAPTURE(dp);
      CAPTURE(P);
      CHECK(dp <= P);
    }
  }
}

TEST_CASE_TEMPLATE("weight operator sigma matches the SVD of the reshaped conv kernel", B, OPNORM_TEST_BACKENDS) {
  net_d<B> net = make_net<B>(15);
  auto& conv = net.template layer<4>();  // conv3x3 32 -> 32: weight (32, 32, 3, 3) viewed as (32, 288)
  const tensor<double, B>& w = conv.weight();
  REQUIRE(w.shape() == shape_t{32, 32, 3, 3});
  const std::vector<double> w_host = w.to_vector();
  const Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(w_host.data(), 32,
                                                                                                   288);
  Eigen::JacobiSVD<analysis::matrix<double>> svd(W, Eigen::ComputeThinV | Eigen::ComputeThinU);

  // The kernel runs on W^T from W's left vector u (one row): v_K is the new
  // left vector and u_K / ||u_K|| the right vector.
  using kernel = power_iteration<weight_operator, l2, no_step>;
  std::mt19937_64 rng(3);
  const tensor<double, B> u0 = random_tensor<B>({1, 32}, rng);
  const tensor<double, B> origin({1, 32}, 0.0);
  typename kernel::template workspace<tensor<double, B>> ws;
  iteration_options<double> o;
  o.iterations = 2000;
  const auto pairs = kernel{}.run(w, origin, nullptr, o, ws, &u0);
  const double sigma = pairs.sigma.to_vector()[0];
  CHECK(std::abs(sigma - svd.singularValues()(0)) / svd.singularValues()(0) < 1e-8);
  CHECK(abs_cos(svd.matrixV().col(0), pairs.u.to_vector()) > 1 - 1e-8);
  CHECK(abs_cos(svd.matrixU().col(0), pairs.v.to_vector()) > 1 - 1e-8);

  // The persistent u amortizes: one more call of one iteration stays converged.
  o.iterations = 1;
  const double again = kernel{}.run(w, origin, nullptr, o, ws, &pairs.v).sigma.to_vector()[0];
  CHECK(std::abs(again - sigma) / sigma < 1e-10);
}

TEST_CASE_TEMPLATE("power iteration leaves the model untouched and a zero Jacobian gives no NaN", B,
                   OPNORM_TEST_BACKENDS) {
  using net_t = net_d<B>;
  net_t net = make_net<B>(16);
  const auto before = net.state();
  std::vector<std::vector<double>> snapshot;
  for (auto& p : before.parameters) snapshot.push_back(p.value->to_vector());
  for (auto& b : before.buffers) snapshot.push_back(b.value->to_vector());

  tensor<double, B> x({2, 1, 28, 28}, 0.5);
  iteration_options<double> o;
  o.iterations = 3;
  o.eps = 0.1;
  power_iteration<jacobian_operator<finite_difference>, l2, unbounded_step>{}.run(net, x, nullptr, o);
  std::size_t k = 0;
  for (auto& p : before.parameters) CHECK(p.value->to_vector() == snapshot[k++]);
  for (auto& b : before.buffers) CHECK(b.value->to_vector() == snapshot[k++]);

  // A zero last layer makes J = 0: u = 0, g = 0, and v must be 0, not NaN.
  net.template layer<net_t::depth - 1>().weight().set_zero();
  const auto pairs = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>{}.run(net, x, nullptr, o);
  for (double e : pairs.v.to_vector()) REQUIRE(e == 0.0);
  for (double s : pairs.sigma.to_vector()) CHECK(s == 0.0);
}
