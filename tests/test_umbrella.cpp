// The umbrella header compiles on its own and gives the whole API, the way a
// user's project includes it.
#include <opnorm/opnorm.hpp>

#include <doctest/doctest.h>

TEST_CASE("opnorm.hpp alone is enough to build, attack and regularize a network") {
  using namespace opnorm;
  sequential<dense<double>, relu<double>, dense<double>> net(dense<double>(4, 8), relu<double>(), dense<double>(8, 3));
  tensor<double> x({2, 4}, 0.5);
  label_tensor<> y({2}, 1);
  attack_options<double> o;
  o.eps = 0.1;
  const auto r = make_pga<l2>(net, o)(x, y);
  CHECK(r.adversarial.shape() == x.shape());
  data_dependent_snr<> method;
  decltype(net)::tape t;
  net.zero_grad();
  CHECK(std::isfinite(method.accumulate_gradients(net, t, x, y).loss));
  static_assert(is_training_method_v<data_dependent_snr<>, decltype(net)>);
  static_assert(is_training_method_v<adversarial<>, decltype(net)>);
  static_assert(is_training_method_v<standard, decltype(net)>);
}
