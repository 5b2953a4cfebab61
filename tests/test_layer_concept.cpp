// The checked layer contract (nn/layers/layer_concept.hpp), the weight-matrix
// hook global SNR reads (sequential::weight_matrices), and the shipped layer
// checker (testing/check_layer.hpp) on user-defined layers, right and wrong.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <opnorm/backend/thrust.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/testing/check_layer.hpp>

#include "test_backends.hpp"

using namespace opnorm;

namespace {

// ---------------------------------------------------------------------------
// Shipped layers satisfy the contract, on the cpu and the Thrust backends.

template <template <class, class> class L>
constexpr bool satisfies_everywhere() {
  using omp = backend::thrust<backend::system::omp>;
  return check_layer_contract<L<float, backend::cpu>>() && check_layer_contract<L<double, backend::cpu>>() &&
         check_layer_contract<L<float, omp>>() && check_layer_contract<L<double, omp>>();
}
static_assert(satisfies_everywhere<dense>());
static_assert(satisfies_everywhere<conv2d>());
static_assert(satisfies_everywhere<batch_norm>());
static_assert(satisfies_everywhere<relu>());
static_assert(satisfies_everywhere<max_pool2d>());
static_assert(satisfies_everywhere<flatten>());
static_assert(satisfies_everywhere<standardize>());

// The layers with parameters say so, and all of them serve Eq. 8.
static_assert(layer_has_parameters<dense<float>>::value && layer_has_parameters<conv2d<float>>::value &&
              layer_has_parameters<batch_norm<float>>::value);
static_assert(!layer_has_parameters<relu<float>>::value && !layer_has_parameters<max_pool2d<float>>::value &&
              !layer_has_parameters<flatten<float>>::value && !layer_has_parameters<standardize<float>>::value);
static_assert(fmnist_cnn<float>::supports_jvp_parameter_vjp && cnn7<float>::supports_jvp_parameter_vjp);
// Only dense and conv2d hand weight matrices to global SNR.
static_assert(has_layer_weight_matrices<dense<float>>::value && has_layer_weight_matrices<conv2d<float>>::value);
static_assert(!has_layer_weight_matrices<batch_norm<float>>::value);

// ---------------------------------------------------------------------------
// User layers. They compute on the host through to_vector / from_vector, so
// they run on every backend without kernels of their own.

template <class T, class B>
std::vector<T> host(const tensor<T, B>& t) {
  return t.to_vector();
}

/// How a scaled_tanh is wrong, to show check_layer catching each mistake.
enum class bug {
  none,
  vjp_input_doubled,            // vjp's input gradient is 2 J^T gy
  jvp_sign,                     // jvp returns -J dx
  parameter_gradient_halved,    // vjp accumulates half of d<gy, y>/da
  jvp_parameter_vjp_no_slope,   // jvp_parameter_vjp forgets the factor 1 - tanh^2
};

/// y_ij = a_j tanh(x_ij) for x of shape (n, features), with one trainable
/// scale a_j per feature.
template <class T = double, class Backend = backend::cpu, bug Bug = bug::none>
class scaled_tanh {
 public:
  using scalar = T;
  using backend_type = Backend;
  static constexpr bool has_parameters = true;
  struct cache {
    std::vector<T> t;  // tanh(x)
  };

  explicit scaled_tanh(index_t features) : a_({features}, T(1)), a_grad_({features}, T(0)) {}

  shape_t output_shape(const shape_t& in) const {
    require_shape(in.size() == 2 && in[1] == a_.size(), "scaled_tanh", "expects (batch, features)");
    return in;
  }

  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache& c, mode) {
    c.t = host(x);
    for (auto& v : c.t) v = std::tanh(v);
    std::vector<T> out = c.t;
    const std::vector<T> a = host(a_);
    const std::size_t f = a.size();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] *= a[i % f];
    y = tensor<T, Backend>::from_vector(output_shape(x.shape()), out);
  }

  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c, const tensor<T, Backend>& gy,
           tensor<T, Backend>* gx, bool parameter_gradients) {
    const std::vector<T> g = host(gy), a = host(a_);
    const std::size_t f = a.size();
    if (gx) {
      std::vector<T> out(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) out[i] = g[i] * a[i % f] * (1 - c.t[i] * c.t[i]);
      if (Bug == bug::vjp_input_doubled)
        for (auto& v : out) v *= 2;
      *gx = tensor<T, Backend>::from_vector(x.shape(), out);
    }
    if (parameter_gradients) {
      std::vector<T> ga = host(a_grad_);
      const T factor = Bug == bug::parameter_gradient_halved ? T(0.5) : T(1);
      for (std::size_t i = 0; i < g.size(); ++i) ga[i % f] += factor * g[i] * c.t[i];
      a_grad_ = tensor<T, Backend>::from_vector(a_grad_.shape(), ga);
    }
  }

  void jvp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache& c, const tensor<T, Backend>& dx,
           tensor<T, Backend>& dy) const {
    const std::vector<T> d = host(dx), a = host(a_);
    const std::size_t f = a.size();
    std::vector<T> out(d.size());
    for (std::size_t i = 0; i < d.size(); ++i) out[i] = a[i % f] * (1 - c.t[i] * c.t[i]) * d[i];
    if (Bug == bug::jvp_sign)
      for (auto& v : out) v = -v;
    dy = tensor<T, Backend>::from_vector(x.shape(), out);
  }

  /// d<g, J dx>/da_j = sum_i g_ij (1 - tanh(x_ij)^2) dx_ij.
  void jvp_parameter_vjp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache& c,
                         const tensor<T, Backend>& dx, const tensor<T, Backend>& g) {
    const std::vector<T> d = host(dx), gs = host(g);
    std::vector<T> ga = host(a_grad_);
    const std::size_t f = ga.size();
    for (std::size_t i = 0; i < d.size(); ++i)
      ga[i % f] += gs[i] * (Bug == bug::jvp_parameter_vjp_no_slope ? T(1) : 1 - c.t[i] * c.t[i]) * d[i];
    a_grad_ = tensor<T, Backend>::from_vector(a_grad_.shape(), ga);
  }

  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    s.parameters.push_back({prefix + "a", &a_, &a_grad_});
  }

  void initialize(std::mt19937_64& rng) { fill_uniform(a_, rng, 2.0); }

 private:
  tensor<T, Backend> a_, a_grad_;
};

/// y = a x with a trainable scalar a, and no jvp_parameter_vjp, declared.
template <class T = double, class Backend = backend::cpu>
class opted_out_scale {
 public:
  using scalar = T;
  using backend_type = Backend;
  static constexpr bool has_parameters = true;
  static constexpr bool supports_jvp_parameter_vjp = false;
  struct cache {};

  shape_t output_shape(const shape_t& in) const { return in; }
  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) { y = scaled(x); }
  void vjp(const tensor<T, Backend>& x, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& gy,
           tensor<T, Backend>* gx, bool parameter_gradients) {
    if (gx) *gx = scaled(gy);
    if (parameter_gradients) {
      const std::vector<T> g = host(gy), xs = host(x);
      T s = 0;
      for (std::size_t i = 0; i < g.size(); ++i) s += g[i] * xs[i];
      a_grad_ = tensor<T, Backend>::from_vector({1}, {host(a_grad_)[0] + s});
    }
  }
  void jvp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& dx,
           tensor<T, Backend>& dy) const {
    dy = scaled(dx);
  }
  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    s.parameters.push_back({prefix + "a", &a_, &a_grad_});
  }
  void initialize(std::mt19937_64&) { a_.fill(T(3)); }

  tensor<T, Backend> scaled(const tensor<T, Backend>& v) const {
    std::vector<T> out = host(v);
    const T a = host(a_)[0];
    for (auto& e : out) e *= a;
    return tensor<T, Backend>::from_vector(v.shape(), out);
  }

 private:
  tensor<T, Backend> a_ = tensor<T, Backend>({1}, T(3)),
                     a_grad_ = tensor<T, Backend>({1}, T(0));
};

/// A layer with a trainable parameter it does not declare.
template <class T = double, class Backend = backend::cpu>
class undeclared_parameter {
 public:
  using scalar = T;
  using backend_type = Backend;
  struct cache {};
  shape_t output_shape(const shape_t& in) const { return in; }
  void forward(const tensor<T, Backend>& x, tensor<T, Backend>& y, cache&, mode) { y = x; }
  void vjp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& gy,
           tensor<T, Backend>* gx, bool) {
    if (gx) *gx = gy;
  }
  void jvp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>& dx,
           tensor<T, Backend>& dy) const {
    dy = dx;
  }
  void collect_state(state_list<T, Backend>& s, const std::string& prefix) {
    s.parameters.push_back({prefix + "b", &b_, &b_grad_});
  }
  void initialize(std::mt19937_64&) {}

 private:
  tensor<T, Backend> b_ = tensor<T, Backend>({1}, T(0)),
                     b_grad_ = tensor<T, Backend>({1}, T(0));
};

/// relu's members without jvp.
template <class T = double, class Backend = backend::cpu>
struct relu_without_jvp {
  using scalar = T;
  using backend_type = Backend;
  struct cache {};
  shape_t output_shape(const shape_t& in) const { return in; }
  void forward(const tensor<T, Backend>&, tensor<T, Backend>&, cache&, mode) {}
  void vjp(const tensor<T, Backend>&, const tensor<T, Backend>&, const cache&, const tensor<T, Backend>&,
           tensor<T, Backend>*, bool) {}
  void collect_state(state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}
};

static_assert(is_layer_v<scaled_tanh<>> && is_layer_v<opted_out_scale<>> && is_layer_v<undeclared_parameter<>>);
static_assert(!is_layer_v<relu_without_jvp<>> && !has_layer_jvp<relu_without_jvp<>>::value);
static_assert(layer_supports_jvp_parameter_vjp_v<scaled_tanh<>> &&
              !layer_supports_jvp_parameter_vjp_v<opted_out_scale<>>);
static_assert(!sequential<dense<double>, opted_out_scale<>>::supports_jvp_parameter_vjp);

/// The tensors global SNR picked before weight_matrices existed: the
/// parameters named "*weight" with rank >= 2.
template <class Net>
std::vector<named_tensor<typename Net::scalar, typename Net::backend_type>> weights_by_name(Net& net) {
  std::vector<named_tensor<typename Net::scalar, typename Net::backend_type>> out;
  const std::string suffix = "weight";
  for (const auto& p : net.state().parameters)
    if (p.value->rank() >= 2 && p.name.size() >= suffix.size() &&
        p.name.compare(p.name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(p);
  return out;
}

template <class Net>
void check_weight_matrices(Net& net, const std::vector<std::string>& expected_names) {
  const auto hooked = net.weight_matrices();
  const auto named = weights_by_name(net);
  REQUIRE(hooked.size() == named.size());
  REQUIRE(hooked.size() == expected_names.size());
  for (std::size_t i = 0; i < hooked.size(); ++i) {
    CAPTURE(i);
    CHECK(hooked[i].name == expected_names[i]);
    CHECK(hooked[i].name == named[i].name);
    CHECK(hooked[i].value == named[i].value);
    CHECK(hooked[i].grad == named[i].grad);
    CHECK(hooked[i].grad != nullptr);
  }
}

bool failed(const testing::layer_check_report& r, const std::string& name) {
  const testing::layer_check* c = r.find(name);
  REQUIRE_MESSAGE(c != nullptr, "no check named " << name);
  return !c->passed;
}

template <bug Bug>
testing::layer_check_report check_buggy_layer() {
  std::mt19937_64 rng(5);
  scaled_tanh<double, backend::cpu, Bug> layer(3);
  layer.initialize(rng);
  std::uniform_real_distribution<double> d(-1.5, 1.5);
  std::vector<double> x(4 * 3);
  for (auto& v : x) v = d(rng);
  return testing::check_layer(layer, tensor<double>::from_vector({4, 3}, x), mode::train);
}

}  // namespace

TEST_CASE("weight_matrices: the shipped networks' weight matrices are exactly their rank >= 2 '*weight' parameters") {
  SUBCASE("fmnist_cnn") {
    auto net = make_fmnist_cnn<float>(1);
    check_weight_matrices(net, {"1.weight", "4.weight", "8.weight", "11.weight", "16.weight", "18.weight"});
  }
  SUBCASE("cnn7") {
    auto net = make_cnn7<float>(1);
    check_weight_matrices(net, {"1.weight", "4.weight", "8.weight", "11.weight", "15.weight", "18.weight",
                                "22.weight", "27.weight"});
  }
  SUBCASE("a dense network without biases, with BatchNorm") {
    sequential<dense<double>, batch_norm<double>, relu<double>, dense<double>> net(
        dense<double>(4, 5, false), batch_norm<double>(5), relu<double>(), dense<double>(5, 2, false));
    check_weight_matrices(net, {"0.weight", "3.weight"});
  }
}

TEST_CASE("sequential refuses a layer whose collect_state reports parameters its type does not declare") {
  using net_type = sequential<dense<double>, undeclared_parameter<>>;
  auto make = [] { return net_type(dense<double>(2, 2), undeclared_parameter<>()); };
  CHECK_THROWS_WITH_AS(make(), doctest::Contains("layer 1 reports trainable parameter 'b'"), std::logic_error);
  CHECK_THROWS_WITH_AS(make(), doctest::Contains("static constexpr bool has_parameters = true;"), std::logic_error);
}

TEST_CASE("a network with a layer that opts out of jvp_parameter_vjp still runs forward, vjp and jvp") {
  sequential<opted_out_scale<>, relu<double>> net{opted_out_scale<>{}, relu<double>{}};
  decltype(net)::tape t;
  const tensor<double> x = tensor<double>::from_vector({1, 3}, {1.0, -2.0, 0.5});
  const tensor<double> dx = tensor<double>::from_vector({1, 3}, {0.25, 1.0, -1.0});
  // a = 3: y = relu(3 x), J dx = 3 dx where x > 0, J^T gy likewise.
  CHECK(host(net.forward(x, t, mode::train)) == std::vector<double>{3.0, 0.0, 1.5});
  tensor<double> jv, gx;
  net.jvp(t, dx, jv);
  CHECK(host(jv) == std::vector<double>{0.75, 0.0, -3.0});
  net.zero_grad();
  net.vjp(t, dx, &gx, true);
  CHECK(host(gx) == std::vector<double>{0.75, 0.0, -3.0});
  // d<dx, relu(a x)>/da = sum over x > 0 of dx x = 0.25 - 0.5.
  CHECK(host(*net.state().parameters[0].grad) == std::vector<double>{-0.25});
}

TEST_CASE_TEMPLATE("check_layer passes a correct user layer (y = a tanh(x)) with every check it makes", B,
                   OPNORM_TEST_BACKENDS) {
  std::mt19937_64 rng(3);
  scaled_tanh<double, B> layer(3);
  layer.initialize(rng);
  std::uniform_real_distribution<double> d(-1.5, 1.5);
  std::vector<double> x(4 * 3);
  for (auto& v : x) v = d(rng);
  const auto report = testing::check_layer(layer, tensor<double, B>::from_vector({4, 3}, x), mode::train);
  INFO(report.describe());
  CHECK(report.passed());
  std::vector<std::string> names;
  for (const auto& c : report.checks) names.push_back(c.name);
  CHECK(names == std::vector<std::string>{testing::vjp_input_check(), testing::vjp_parameter_check("a"),
                                          testing::jvp_check(), testing::adjoint_check(),
                                          testing::jvp_parameter_vjp_check("a")});
  for (const auto& c : report.checks) {
    CAPTURE(c.name);
    CHECK(c.tolerance == 1e-6);
    CHECK(c.error < 1e-6);
  }
  CHECK(report.describe().find("all 5 checks passed") != std::string::npos);
}

TEST_CASE("check_layer reports a vjp whose input gradient is doubled, in the vjp and adjointness checks only") {
  const auto r = check_buggy_layer<bug::vjp_input_doubled>();
  INFO(r.describe());
  CHECK(!r.passed());
  CHECK(failed(r, testing::vjp_input_check()));
  CHECK(failed(r, testing::adjoint_check()));
  CHECK(!failed(r, testing::vjp_parameter_check("a")));
  CHECK(!failed(r, testing::jvp_check()));
  CHECK(!failed(r, testing::jvp_parameter_vjp_check("a")));
  // J^T gy doubled is off by half its size.
  CHECK(r.find(testing::vjp_input_check())->error == doctest::Approx(0.5).epsilon(1e-6));
  CHECK(r.describe().find("2 of 5 checks failed") != std::string::npos);
}

// The jvp_parameter_vjp check differentiates the layer's own jvp (what
// sequential composes), so a wrong jvp shows there too.
TEST_CASE("check_layer reports a jvp with the wrong sign, in the checks that read jvp and not in vjp's") {
  const auto r = check_buggy_layer<bug::jvp_sign>();
  INFO(r.describe());
  CHECK(failed(r, testing::jvp_check()));
  CHECK(failed(r, testing::adjoint_check()));
  CHECK(failed(r, testing::jvp_parameter_vjp_check("a")));
  CHECK(!failed(r, testing::vjp_input_check()));
  CHECK(!failed(r, testing::vjp_parameter_check("a")));
  CHECK(r.find(testing::jvp_check())->error == doctest::Approx(2.0).epsilon(1e-6));
}

TEST_CASE("check_layer reports a halved parameter gradient, in that parameter's vjp check only") {
  const auto r = check_buggy_layer<bug::parameter_gradient_halved>();
  INFO(r.describe());
  CHECK(failed(r, testing::vjp_parameter_check("a")));
  CHECK(!failed(r, testing::vjp_input_check()));
  CHECK(!failed(r, testing::jvp_check()));
  CHECK(!failed(r, testing::adjoint_check()));
  CHECK(!failed(r, testing::jvp_parameter_vjp_check("a")));
}

TEST_CASE("check_layer reports a wrong jvp_parameter_vjp, in its check only") {
  const auto r = check_buggy_layer<bug::jvp_parameter_vjp_no_slope>();
  INFO(r.describe());
  CHECK(failed(r, testing::jvp_parameter_vjp_check("a")));
  CHECK(!failed(r, testing::vjp_input_check()));
  CHECK(!failed(r, testing::vjp_parameter_check("a")));
  CHECK(!failed(r, testing::jvp_check()));
  CHECK(!failed(r, testing::adjoint_check()));
}
