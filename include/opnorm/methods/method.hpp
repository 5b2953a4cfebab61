#pragma once
// What a training method is.
//
// A training method decides what gradient one batch contributes: plain
// cross-entropy (standard), cross-entropy at adversarial inputs
// (adversarial), cross-entropy plus a spectral-norm penalty (global and
// data-dependent SNR). The trainer owns everything else (data order,
// optimizer, schedule, evaluation, callbacks), so a method is one call:
//
//   struct Method {
//     static constexpr const char* name = "...";   // written into logs and checkpoints
//
//     template <class Model>
//     batch_result accumulate_gradients(Model& model, typename Model::tape& tape,
//                                       const typename Model::tensor_type& x,
//                                       const label_tensor<typename Model::backend_type>& y);
//   };
//
// Contract:
//  * On entry every parameter gradient of the model is zero (the trainer calls
//    model.zero_grad()). On return the gradients hold the full gradient of the
//    method's objective for this batch, averaged over the batch. Terms that act
//    on the weights directly (global SNR's lambda * sigma * u v^T) are added
//    here too: the optimizer steps right after this call, so this is the place
//    to modify gradients before the update, and no separate hook is needed.
//  * x is the batch in pixel space ([0, 1]), (n, channels, height, width) or
//    (n, features); y holds n class labels. The method must not modify them.
//  * tape is scratch space the trainer reuses across batches to avoid
//    allocations; a method may run as many forward passes through it as it
//    likes, and may keep further tapes of its own.
//  * The method may update BatchNorm running statistics (a mode::train
//    forward does) but must not change parameters: only the optimizer does.
//  * The returned loss is the method's objective (mean over the batch), and
//    correct counts the examples the model classified correctly in the
//    forward pass that loss came from (for adversarial training, at the
//    adversarial inputs). A non-finite loss or gradient stops training.
//  * Whatever a method carries from one batch to the next must survive a
//    resume, or the resumed run is not the unbroken one. Tensors (persistent
//    power iteration vectors) are exposed as `state_list<T, Backend> state()`;
//    integer counters as `std::vector<named_counter> counters()`, which needs
//    no T or Backend, so methods that are not templated on them
//    (adversarial, data_dependent_snr: the batch counter that seeds their
//    random starts) can offer it. Training checkpoints save and restore both
//    as "method.<name>" entries, counters as I64 scalars ("method.step"), and
//    refuse a file that lacks one (train/training_checkpoint.hpp).
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/options.hpp"
#include "../core/state.hpp"  // state_list, named_counter: what methods expose for checkpoints
#include "../nn/losses.hpp"
#include "../core/labels.hpp"

namespace opnorm {

/// What one call of accumulate_gradients reports back.
struct batch_result {
  double loss = 0;        // the method's objective, mean over the batch
  index_t correct = 0;    // examples classified correctly
  index_t examples = 0;   // examples in the batch
};


namespace detail {
template <class Method, class Model, class = void>
struct is_training_method : std::false_type {};
template <class Method, class Model>
struct is_training_method<
    Method, Model,
    std::enable_if_t<std::is_same_v<
        decltype(std::declval<Method&>().accumulate_gradients(
            std::declval<Model&>(), std::declval<typename Model::tape&>(),
            std::declval<const typename Model::tensor_type&>(),
            std::declval<const label_tensor<typename Model::backend_type>&>())),
        batch_result>&& std::is_convertible_v<decltype(Method::name), const char*>>>
    : std::true_type {};
}  // namespace detail

/// True when Method satisfies the contract above for Model.
template <class Method, class Model>
inline constexpr bool is_training_method_v = detail::is_training_method<Method, Model>::value;

}  // namespace opnorm
