// Must not compile: a layer with parameters that opts out of
// jvp_parameter_vjp is fine in a network (forward, vjp, jvp), but asking the
// network for Eq. 8's jvp_parameter_vjp refuses with a sentence.
#include <opnorm/nn/layers/relu.hpp>
#include <opnorm/nn/sequential.hpp>

// y = a * x with one trainable scalar a, whose JVP's parameter gradient it
// does not provide.
template <class T = double, class Backend = opnorm::backend::cpu>
class scale_without_jvp_parameter_vjp {
 public:
  using scalar = T;
  using backend_type = Backend;
  static constexpr bool has_parameters = true;
  static constexpr bool supports_jvp_parameter_vjp = false;
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
  void collect_state(opnorm::state_list<T, Backend>& s, const std::string& prefix) {
    s.parameters.push_back({prefix + "a", &a_, &a_grad_});
  }
  void initialize(std::mt19937_64&) { a_.fill(T(1)); }

 private:
  opnorm::tensor<T, Backend> a_ = opnorm::tensor<T, Backend>({1}, T(1)),
                             a_grad_ = opnorm::tensor<T, Backend>({1}, T(0));
};

using net_type = opnorm::sequential<scale_without_jvp_parameter_vjp<>, opnorm::relu<double>>;

void eq8(net_type& net, net_type::tape& t, const net_type::tensor_type& x, const net_type::tensor_type& v) {
  net.forward(x, t, opnorm::mode::eval);
  net_type::tensor_type jv;
  net.jvp(t, v, jv);                                    // compiles: the network is usable
  net.vjp(t, jv, nullptr, true);                        // compiles
  net.jvp_parameter_vjp(t, v, jv);                      // Eq. 8: refuses
}
