// Must not compile: loss_gradient's forward half is the gradient of the
// loss with respect to the logits, and this user's loss (the 0-1 loss)
// gives only a value.
#include <opnorm/kernel/power_iteration.hpp>
struct zero_one_loss {
  template <class T, class B>
  using target_type = opnorm::label_tensor<B>;
  template <class T, class B>
  static T evaluate(const opnorm::tensor<T, B>& logits, const opnorm::label_tensor<B>& labels, opnorm::reduction) {
    (void)logits;
    (void)labels;
    return T(0);
  }
};
opnorm::loss_gradient<zero_one_loss> direction;
