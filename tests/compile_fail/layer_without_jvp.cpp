// Must not compile: a user layer without jvp, used in a network, fails where
// the network is declared, with the sentence naming jvp.
#include <opnorm/nn/layers/dense.hpp>
#include <opnorm/nn/sequential.hpp>

template <class T = double, class Backend = opnorm::backend::cpu>
struct identity_without_jvp {
  using scalar = T;
  using backend_type = Backend;
  struct cache {};
  opnorm::shape_t output_shape(const opnorm::shape_t& in) const { return in; }
  void forward(const opnorm::tensor<T, Backend>& x, opnorm::tensor<T, Backend>& y, cache&, opnorm::mode) { y = x; }
  void vjp(const opnorm::tensor<T, Backend>&, const opnorm::tensor<T, Backend>&, const cache&,
           const opnorm::tensor<T, Backend>& gy, opnorm::tensor<T, Backend>* gx, bool) {
    if (gx) *gx = gy;
  }
  void collect_state(opnorm::state_list<T, Backend>&, const std::string&) {}
  void initialize(std::mt19937_64&) {}
};

opnorm::sequential<opnorm::dense<double>, identity_without_jvp<>> net(opnorm::dense<double>(3, 2),
                                                                      identity_without_jvp<>{});
