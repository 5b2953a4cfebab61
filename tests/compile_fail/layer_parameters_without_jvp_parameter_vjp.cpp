// Must not compile: a layer that declares parameters must provide
// jvp_parameter_vjp or opt out explicitly; sequential<> checks it.
#include <opnorm/nn/sequential.hpp>

template <class T = double, class Backend = opnorm::backend::cpu>
struct scale_silently_without_jvp_parameter_vjp {
  using scalar = T;
  using backend_type = Backend;
  static constexpr bool has_parameters = true;
  struct cache {};
  opnorm::shape_t output_shape(const opnorm::shape_t& in) const { return in; }
  void forward(const opnorm::tensor<T, Backend>& x, opnorm::tensor<T, Backend>& y, cache&, opnorm::mode) { y = x; }
  void vjp(const opnorm::tensor<T, Backend>&, const opnorm::tensor<T, Backend>&, const cache&,
           const opnorm::tensor<T, Backend>& gy, opnorm::tensor<T, Backend>* gx, bool) {
    if (gx) *gx = gy;
  }
  void jvp(const opnorm::tensor<T, Backend>&, const opnorm::tensor<T, Backend>&, const cache&,
           const opnorm::tensor<T, Backend>& dx, opnorm::tensor<T, Backend>& dy) const {
    dy = dx;
  }
  void collect_state(opnorm::state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}
};

opnorm::sequential<scale_silently_without_jvp_parameter_vjp<>> net{scale_silently_without_jvp_parameter_vjp<>{}};
