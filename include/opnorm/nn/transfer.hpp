#pragma once
// Moving tensors, networks, optimizers and method state between backends.
//
//   auto device_model = to<backend::thrust_omp>(model);        // a copy on thrust<omp>
//   auto device_opt   = to<backend::thrust_omp>(opt, device_model);
//   auto device_snr   = to<backend::thrust_omp>(snr, device_model);
//   auto host_x       = to<backend::cpu>(device_x);
//
// Every copy goes through host memory (to_vector, then copy_from_host on the
// other side): that is the one path every backend offers, including a CUDA
// device the host cannot dereference. The copies are exact, element for
// element, so a model moved away and back is the same model, and training
// continued on the other backend takes the same steps up to the backends'
// own rounding differences.
//
// What moves with what:
//   network    every layer rebuilt as L<T, B2> with the same configuration;
//              parameters, their gradients, buffers (BatchNorm's running
//              statistics, standardize's mean and std) and counters
//              (num_batches_tracked) copied. Tapes are not: they hold one
//              forward pass and are rebuilt by the next.
//   optimizer  options, momentum or Adam's moments, and the step counter,
//              bound to the moved network (same parameter names).
//   global_snr lambda, iterations and the persistent power-iteration vectors
//              ("<weight>.u"); last_sigma() starts empty again (it reports
//              the latest step and is refilled by the next one).
//              adversarial, data_dependent_snr and standard are not tied to
//              a backend and need no moving.
#include <type_traits>

#include "layers/layer.hpp"
#include "../methods/global_snr.hpp"
#include "sequential.hpp"
#include "../core/tensor.hpp"
#include "../train/optimizers.hpp"

namespace opnorm {

/// A copy of t on backend B2.
template <class B2, class T, class B>
tensor<T, B2> to(const tensor<T, B>& t) {
  return copy_to_backend<B2>(t);
}

/// A copy of the network on backend B2 (see sequential::to).
template <class B2, class... Layers>
auto to(const sequential<Layers...>& model) {
  return model.template to<B2>();
}

/// optimizer moved to backend B2 and bound to model, the network it was
/// stepping after its own move to B2.
template <class B2, class T, class B, class Model>
sgd<T, B2> to(const sgd<T, B>& optimizer, Model& model) {
  static_assert(std::is_same_v<typename Model::backend_type, B2>,
                "to<B2>(optimizer, model): model must already be on backend B2 (move it first with to<B2>(model))");
  return sgd<T, B2>(optimizer, model);
}
template <class B2, class T, class B, class Model>
adam<T, B2> to(const adam<T, B>& optimizer, Model& model) {
  static_assert(std::is_same_v<typename Model::backend_type, B2>,
                "to<B2>(optimizer, model): model must already be on backend B2 (move it first with to<B2>(model))");
  return adam<T, B2>(optimizer, model);
}

/// global_snr moved to backend B2 for model (already on B2): same lambda and
/// iterations, and the persistent vectors copied by name, so the next power
/// iteration continues from where the last one stopped.
template <class B2, class T, class B, class Model>
global_snr<T, B2> to(const global_snr<T, B>& method, Model& model) {
  static_assert(std::is_same_v<typename Model::backend_type, B2>,
                "to<B2>(method, model): model must already be on backend B2 (move it first with to<B2>(model))");
  // The constructor draws fresh vectors for each weight of model (and so
  // checks that model has the weights method has vectors for); they are
  // then overwritten. state() is not const only because it hands out
  // mutable pointers; nothing is written through method's.
  global_snr<T, B2> moved(model, method.lambda, method.iterations);
  copy_state(const_cast<global_snr<T, B>&>(method).state(), moved.state());
  return moved;
}

}  // namespace opnorm
