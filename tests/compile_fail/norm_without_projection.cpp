// Must not compile: projected_step projects onto the eps-ball, and this
// user's norm has everything the power iteration needs except the
// projection (and the uniform sample inside the ball).
#include <opnorm/kernel/power_iteration.hpp>
struct l2_without_projection {
  template <class T, class B>
  static void steepest_ascent(const opnorm::tensor<T, B>& g, opnorm::tensor<T, B>& v) {
    opnorm::l2::steepest_ascent(g, v);
  }
  template <class T, class B>
  static void dual_norms(const opnorm::tensor<T, B>& g, opnorm::tensor<T, B>& out) {
    opnorm::l2::dual_norms(g, out);
  }
  template <class T, class B>
  static void random_direction(const opnorm::tensor<T, B>& x, std::uint64_t seed, opnorm::tensor<T, B>& v) {
    opnorm::l2::random_direction(x, seed, v);
  }
};
opnorm::power_iteration<opnorm::jacobian_operator<opnorm::loss_gradient<>>, l2_without_projection, opnorm::projected_step>
    kernel;
