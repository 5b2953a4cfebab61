#pragma once
// fit: the epoch loop.
//
//   auto model = make_fmnist_cnn<float>(seed);
//   standard method;
//   sgd optimizer(model, sgd_options{0.05, 0.9, 5e-4});
//   cosine_schedule schedule(0.05, epochs);
//   fit_options options;  options.epochs = epochs;  options.seed = seed;
//   fit(model, method, optimizer, schedule, train, test, options,
//       progress(), csv_log("out/log.csv"), checkpoint_each_epoch("out/last.safetensors"));
//
// Every epoch: the training set in an order drawn from (seed, epoch), each
// batch optionally augmented with a generator also drawn from (seed, epoch);
// per batch: set the learning rate from the schedule, zero the gradients,
// let the method accumulate them, check the loss is finite, step the
// optimizer; then evaluate the test set in eval mode and call the callbacks.
// Because nothing about an epoch depends on what ran before it except the
// model, optimizer and method state, a run resumed from a checkpoint at
// epoch e (options.start_epoch = e) is bit-identical to an unbroken one.
//
// A non-finite loss or gradient stops training with training_diverged before
// the optimizer applies it, and so does a parameter that an update made
// non-finite (checked once per epoch, before the callbacks): no callback sees
// a diverged epoch, so the last checkpoint written is the last good one.
//
// Data-parallel training: fit(communicator, model, ...) runs the same loop
// on every rank of a job (distributed/communicator.hpp). Rank 0's model,
// method and optimizer state are broadcast at the start; every rank draws
// the same global batch (same order, same augmentation) and works on its
// shard of it (distributed::shard_of); the parameter gradients are averaged
// with each rank's share of the batch, so the update is the single-process
// one. BatchNorm buffers are broadcast from rank 0 before every step, as
// PyTorch DDP does, so eval-mode passes (attacks, power iterations) see the
// same map on every rank; with distributed::synchronize_batch_norm the
// train-mode statistics are the global batch's too, and the run matches one
// process with the global batch. Losses, accuracies and the test evaluation
// are reduced over ranks, so every rank's reports and callbacks see the
// global numbers; wrap callbacks that write in distributed::on_root.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../data/augmentation.hpp"
#include "../data/batching.hpp"
#include "../data/dataset.hpp"
#include "../core/state.hpp"
#include "../methods/method.hpp"
#include "../core/mode.hpp"
#include "../distributed/communicator.hpp"
#include "../distributed/data_parallel.hpp"
#include "batch_transfer.hpp"
#include "evaluate.hpp"
#include "reports.hpp"
#include "training_checkpoint.hpp"  // detail::method_state, detail::has_state

namespace opnorm {

struct fit_options {
  index_t epochs = 10;           // the run ends after this many epochs in total
  index_t batch_size = 128;
  std::uint64_t seed = 0;        // data order and augmentation of epoch e depend on (seed, e) only
  index_t start_epoch = 0;       // epochs already completed: set from a checkpoint to resume
  epoch_progress start_progress; // batches of epoch start_epoch already done (a mid-epoch checkpoint)
  last_batch last = last_batch::keep;
  std::optional<pad_crop_flip> augmentation;  // none: train on the images as they are
  index_t eval_batch_size = 256;  // in eval mode only memory use and rounding depend on it
};

/// Thrown when the loss or a parameter stops being finite.
class training_diverged : public std::runtime_error {
 public:
  training_diverged(const std::string& message, index_t epoch, index_t step)
      : std::runtime_error(message), epoch_(epoch), step_(step) {}
  index_t epoch() const { return epoch_; }  // from 0
  index_t step() const { return step_; }    // from 0; -1 when found at the end of the epoch

 private:
  index_t epoch_, step_;
};

/// What fit returns: a report per epoch run by this call.
struct fit_result {
  std::vector<epoch_report> history;
  bool stopped_early = false;  // a callback asked to stop before options.epochs
};

namespace detail {

template <class C, class = void>
struct has_on_train_begin : std::false_type {};
template <class C>
struct has_on_train_begin<C, std::void_t<decltype(std::declval<C&>().on_train_begin(std::declval<const run_info&>()))>>
    : std::true_type {};

template <class C, class = void>
struct has_on_step_end : std::false_type {};
template <class C>
struct has_on_step_end<C, std::void_t<decltype(std::declval<C&>().on_step_end(std::declval<const step_report&>()))>>
    : std::true_type {};

template <class C, class Context, class = void>
struct has_on_step_end_with_context : std::false_type {};
template <class C, class Context>
struct has_on_step_end_with_context<C, Context,
                                    std::void_t<decltype(std::declval<C&>().on_step_end(
                                        std::declval<const step_report&>(), std::declval<Context&>()))>>
    : std::true_type {};

template <class C, class Context, class = void>
struct has_on_epoch_end : std::false_type {};
template <class C, class Context>
struct has_on_epoch_end<C, Context,
                        std::void_t<decltype(std::declval<C&>().on_epoch_end(std::declval<const epoch_report&>(),
                                                                             std::declval<Context&>()))>>
    : std::true_type {};

template <class C, class = void>
struct has_stop_requested : std::false_type {};
template <class C>
struct has_stop_requested<C, std::void_t<decltype(bool(std::declval<const C&>().stop_requested()))>>
    : std::true_type {};

template <class C, class Context>
inline constexpr bool is_callback_v = has_on_train_begin<C>::value || has_on_step_end<C>::value ||
                                      has_on_step_end_with_context<C, Context>::value ||
                                      has_on_epoch_end<C, Context>::value || has_stop_requested<C>::value;

// Each calls the hook when the callback has it and does nothing otherwise.
template <class C>
void notify_train_begin(C& c, const run_info& run) {
  if constexpr (has_on_train_begin<C>::value) c.on_train_begin(run);
}
template <class C, class Context>
void notify_step_end(C& c, const step_report& step, Context& context) {
  if constexpr (has_on_step_end<C>::value) c.on_step_end(step);
  if constexpr (has_on_step_end_with_context<C, Context>::value) c.on_step_end(step, context);
}
template <class C, class Context>
void notify_epoch_end(C& c, const epoch_report& epoch, Context& context) {
  if constexpr (has_on_epoch_end<C, Context>::value) c.on_epoch_end(epoch, context);
}
template <class C>
bool asks_to_stop(const C& c) {
  if constexpr (has_stop_requested<C>::value) return c.stop_requested();
  else return false;
}

/// The augmentation generator of one epoch: like the data order, a function
/// of (seed, epoch) only, but a different stream (the last word), so that
/// the crops are not correlated with the shuffle.
inline std::mt19937_64 augmentation_engine(std::uint64_t seed, index_t epoch) {
  const auto e = static_cast<std::uint64_t>(epoch);
  std::seed_seq words{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                      static_cast<std::uint32_t>(e), static_cast<std::uint32_t>(e >> 32), 0x61756775u /* "augu" */};
  return std::mt19937_64(words);
}

/// The number of entries of t that are NaN or infinite, counted on t's
/// backend: one integer reaches the host. x - x is 0 exactly when x is
/// finite (inf - inf and NaN - NaN are NaN), which needs no math library in
/// device code.
template <class T, class B>
index_t count_non_finite(const tensor<T, B>& t) {
  const T* v = t.data();
  return backend_ops<B>::template sum<index_t>(t.size(), [=] OPNORM_HD(index_t i) { return index_t(!(v[i] - v[i] == T(0))); });
}

/// The name of the first model tensor (parameter or buffer) holding a NaN
/// or infinity, or an empty string.
template <class Model>
std::string first_non_finite_tensor(Model& model) {
  auto state = model.state();
  for (const auto& p : state.parameters)
    if (count_non_finite(*p.value) > 0) return p.name;
  for (const auto& b : state.buffers)
    if (count_non_finite(*b.value) > 0) return b.name;
  return {};
}

inline constexpr const char* diverged_note =
    "; training stopped before this step's update, checkpoints already written were left as they were";

/// Finds parameters whose gradient holds a NaN or an infinity, reading each
/// gradient once on its own backend and copying one integer per tensor to
/// the host.
template <class T, class B>
class finite_gradient_check {
 public:
  /// The name of the first parameter with a non-finite gradient, or "".
  std::string first_non_finite(const state_list<T, B>& s) {
    for (const auto& p : s.parameters)
      if (count_non_finite(*p.grad) > 0) return p.name;
    return {};
  }
};

inline std::string format_number(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

template <class Model, class T>
void check_fit_inputs(Model& model, const dataset<T>& train, const dataset<T>& test, const fit_options& o) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("opnorm::fit: " + what); };
  if (o.epochs < 1) fail("epochs must be >= 1, got " + std::to_string(o.epochs));
  if (o.start_epoch < 0 || o.start_epoch > o.epochs)
    fail("start_epoch " + std::to_string(o.start_epoch) + " outside [0, epochs = " + std::to_string(o.epochs) + "]");
  if (o.batch_size < 1) fail("batch_size must be >= 1, got " + std::to_string(o.batch_size));
  const epoch_progress& p = o.start_progress;
  if (p.steps_completed < 0 || p.correct < 0 || p.examples < 0 || p.correct > p.examples ||
      !std::isfinite(p.loss_sum) || (p.steps_completed == 0) != (p.examples == 0))
    fail("start_progress (" + std::to_string(p.steps_completed) + " steps, " + std::to_string(p.correct) + " of " +
         std::to_string(p.examples) + " correct) is inconsistent");
  if (p.steps_completed > 0 && o.start_epoch >= o.epochs)
    fail("start_progress resumes inside epoch " + std::to_string(o.start_epoch + 1) + ", but the run has " +
         std::to_string(o.epochs) + " epochs");
  if (o.eval_batch_size < 1) fail("eval_batch_size must be >= 1, got " + std::to_string(o.eval_batch_size));
  if (train.size() == 0) fail("the training set '" + train.name + "' is empty");
  if (o.last == last_batch::drop && train.size() < o.batch_size)
    fail("the training set has " + std::to_string(train.size()) + " examples, fewer than one batch of " +
         std::to_string(o.batch_size) + ", and last_batch::drop would leave no batch");
  if (test.size() > 0 && test.example_shape() != train.example_shape())
    fail("test examples are " + shape_string(test.example_shape()) + " but training examples are " +
         shape_string(train.example_shape()));
  // Runs the layers' shape checks once, up front, so a wrong network fails
  // with the layer's message instead of in the middle of the first epoch.
  shape_t input = train.images.shape();
  input[0] = 1;
  const shape_t out = model.output_shape(input);
  if (out.size() != 2 || out[1] != train.classes)
    fail("the model maps " + shape_string(input) + " to " + shape_string(out) + ", but '" + train.name +
         "' has " + std::to_string(train.classes) + " classes");
}

// Refuses batches that would leave a rank without examples: every rank runs
// every step, and a method cannot run on an empty shard.
template <class T>
void check_shards(const dataset<T>& train, const fit_options& o, int ranks) {
  if (ranks <= 1) return;
  auto fail = [](const std::string& what) { throw std::invalid_argument("opnorm::fit: " + what); };
  if (o.batch_size < ranks)
    fail("batch_size " + std::to_string(o.batch_size) + " is smaller than the " + std::to_string(ranks) +
         " ranks of the job; every rank needs at least one example per step");
  const index_t left = train.size() % o.batch_size;
  if (o.last == last_batch::keep && left > 0 && left < ranks)
    fail("the last batch of each epoch has " + std::to_string(left) + " examples, fewer than the " +
         std::to_string(ranks) + " ranks; use last_batch::drop or another batch size");
}

// Rows [part.begin, part.end) of a host batch.
template <class T>
void copy_shard(const tensor<T, backend::cpu>& images, const label_tensor<backend::cpu>& labels,
                distributed::shard part, tensor<T, backend::cpu>& shard_images, label_tensor<backend::cpu>& shard_labels) {
  shape_t shape = images.shape();
  shape.at(0) = part.size();
  shard_images.resize(shape);
  shard_labels.resize({part.size()});
  const index_t e = images.example_size();
  std::copy_n(images.data() + part.begin * e, part.size() * e, shard_images.data());
  std::copy_n(labels.data() + part.begin, part.size(), shard_labels.data());
}

// Rank 0's model, method and optimizer state, everywhere: a job starts (or
// resumes) from one state even if the ranks built or loaded theirs apart.
template <class Communicator, class Model, class Method, class Optimizer>
void broadcast_training_state(Communicator& comm, Model& model, Method& method, Optimizer& optimizer) {
  distributed::broadcast_state(comm, model.state());
  distributed::broadcast_state(comm, method_state<Model>(method));
  if constexpr (has_state<Optimizer>::value) distributed::broadcast_state(comm, optimizer.state());
}

// The fields step_report and epoch_report share: where in the run the
// report stands and the learning rate in use.
template <class Report>
void place_report(Report& r, index_t epoch, const fit_options& options, double learning_rate) {
  r.epoch = epoch;
  r.epochs = options.epochs;
  r.start_epoch = options.start_epoch;
  r.learning_rate = learning_rate;
}

}  // namespace detail

/// Trains model with method and optimizer for epochs [options.start_epoch,
/// options.epochs). test may be an empty dataset (no evaluation). Callbacks
/// are any objects with the members listed in train/reports.hpp; they are
/// called in the order given.
///
/// With a communicator first, the job's ranks train together (see the top
/// of the file); every rank must make the same call.
template <class Communicator, class Model, class Method, class Optimizer, class Schedule, class T,
          class... Callbacks, class = std::enable_if_t<distributed::is_communicator_v<Communicator>>>
fit_result fit(Communicator& comm, Model& model, Method& method, Optimizer& optimizer, const Schedule& schedule,
               const dataset<T>& train, const dataset<T>& test, const fit_options& options,
               Callbacks&&... callbacks) {
  using B = typename Model::backend_type;
  using context_type = training_context<Model, Method, Optimizer>;
  static_assert(std::is_same_v<typename Model::scalar, T>,
                "fit: the datasets' pixel type must be the model's scalar type");
  static_assert(is_training_method_v<Method, Model>,
                "fit: the method must provide `static constexpr const char* name` and "
                "`batch_result accumulate_gradients(Model&, Model::tape&, const Model::tensor_type&, "
                "const label_tensor<Model::backend_type>&)`; see methods/method.hpp");
  static_assert(std::is_convertible_v<std::invoke_result_t<const Schedule&, index_t, index_t, index_t>, double>,
                "fit: a schedule is callable as double(index_t epoch, index_t step, index_t steps_per_epoch); "
                "see train/schedules.hpp");
  static_assert((detail::is_callback_v<std::remove_reference_t<Callbacks>, context_type> && ...),
                "fit: every argument after the options must be a callback with at least one of "
                "on_train_begin(const run_info&), on_step_end(const step_report&[, Context&]), "
                "on_epoch_end(const epoch_report&, Context&), stop_requested(); see train/reports.hpp");
  detail::check_fit_inputs(model, train, test, options);
  detail::check_shards(train, options, comm.size());
  const bool parallel = comm.size() > 1;
  if (parallel) detail::broadcast_training_state(comm, model, method, optimizer);

  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };

  batch_loader<T> batches(train, options.batch_size, batch_order::shuffled, options.last, options.seed);
  const index_t steps_per_epoch = batches.batches_per_epoch();
  context_type context{model, method, optimizer, options};
  (void)context;  // unused when no callback has on_epoch_end

  run_info run;
  run.method = Method::name;
  run.start_epoch = options.start_epoch;
  run.epochs = options.epochs;
  run.steps_per_epoch = steps_per_epoch;
  run.batch_size = options.batch_size;
  run.train_examples = train.size();
  run.test_examples = test.size();
  run.seed = options.seed;
  (detail::notify_train_begin(callbacks, run), ...);

  fit_result result;
  typename Model::tape tape;
  batch_transfer<T, B> batch;
  detail::finite_gradient_check<T, B> gradient_check;
  // Data parallel: the global batch (every rank draws it, so the order and
  // the augmentation are the single-process ones) and the gradient buckets.
  tensor<T, backend::cpu> global_images;
  label_tensor<backend::cpu> global_labels;
  tensor<T, backend::cpu>& drawn_images = parallel ? global_images : batch.host_images;
  label_tensor<backend::cpu>& drawn_labels = parallel ? global_labels : batch.host_labels;
  distributed::gradient_averager<T, B> averager;
  if (options.start_progress.steps_completed > steps_per_epoch)
    throw std::invalid_argument("opnorm::fit: start_progress has " +
                                std::to_string(options.start_progress.steps_completed) +
                                " steps completed, but an epoch has " + std::to_string(steps_per_epoch));
  for (index_t epoch = options.start_epoch; epoch < options.epochs; ++epoch) {
    const auto epoch_start = clock::now();
    batches.start_epoch(epoch);
    std::mt19937_64 augmentation_rng = detail::augmentation_engine(options.seed, epoch);
    double learning_rate = 0;
    epoch_progress progress;
    // Resuming inside this epoch: draw (and drop) the batches already done,
    // so the order and the augmentation generator stand where the
    // interrupted run left them, and continue its running sums.
    index_t resume_at = 0;
    if (epoch == options.start_epoch && options.start_progress.steps_completed > 0) {
      resume_at = options.start_progress.steps_completed;
      progress = options.start_progress;
    }
    for (index_t step = 0; batches.next(drawn_images, drawn_labels); ++step) {
      if (options.augmentation) (*options.augmentation)(drawn_images, augmentation_rng);
      if (step < resume_at) {
        learning_rate = static_cast<double>(schedule(epoch, step, steps_per_epoch));  // for the epoch's report
        continue;
      }
      const index_t global_count = drawn_images.dim(0);
      if (parallel) {
        detail::copy_shard(global_images, global_labels, distributed::shard_of(global_count, comm.rank(), comm.size()),
                           batch.host_images, batch.host_labels);
        state_list<T, B> buffers = model.state();
        buffers.parameters.clear();
        distributed::broadcast_state(comm, buffers);
      }
      batch.to_backend();
      learning_rate = static_cast<double>(schedule(epoch, step, steps_per_epoch));
      if (!(learning_rate >= 0 && std::isfinite(learning_rate)))
        throw std::invalid_argument("opnorm::fit: the schedule gave the learning rate " +
                                    detail::format_number(learning_rate) + " for epoch " +
                                    std::to_string(epoch + 1) + ", step " + std::to_string(step + 1) +
                                    "; a learning rate must be finite and >= 0");
      optimizer.set_learning_rate(learning_rate);
      model.zero_grad();
      batch_result r = method.accumulate_gradients(model, tape, batch.images(), batch.labels());
      if (parallel) {
        averager.average(comm, model.state(),
                         static_cast<double>(batch.host_images.dim(0)) / static_cast<double>(global_count));
        r = distributed::reduce_batch_result(comm, r);
      }
      auto where = [&] {
        return " at epoch " + std::to_string(epoch + 1) + " of " + std::to_string(options.epochs) + ", step " +
               std::to_string(step + 1) + " of " + std::to_string(steps_per_epoch) + " (learning rate " +
               detail::format_number(learning_rate) + ")";
      };
      if (!std::isfinite(r.loss))
        throw training_diverged("opnorm::fit: the " + std::string(Method::name) + " loss is " +
                                    detail::format_number(r.loss) + where() + detail::diverged_note,
                                epoch, step);
      // A finite loss does not guarantee finite gradients (ReLU and max
      // pooling drop a NaN activation in the forward pass, BatchNorm's
      // backward pass spreads it), and one NaN update ruins every parameter.
      const std::string bad_gradient = gradient_check.first_non_finite(model.state());
      if (!bad_gradient.empty())
        throw training_diverged("opnorm::fit: the gradient of '" + bad_gradient + "' holds NaN or infinity" +
                                    where() + ", although the loss is " + detail::format_number(r.loss) +
                                    detail::diverged_note,
                                epoch, step);
      optimizer.step(model);

      progress.steps_completed = step + 1;
      progress.loss_sum += r.loss * static_cast<double>(r.examples);
      progress.correct += r.correct;
      progress.examples += r.examples;
      step_report s;
      detail::place_report(s, epoch, options, learning_rate);
      s.step = step;
      s.steps_per_epoch = steps_per_epoch;
      s.batch_loss = r.loss;
      s.loss = progress.mean_loss();
      s.accuracy = progress.accuracy();
      s.examples = progress.examples;
      s.seconds = seconds_since(epoch_start);
      s.progress = progress;
      (detail::notify_step_end(callbacks, s, context), ...);
    }

    epoch_report report;
    detail::place_report(report, epoch, options, learning_rate);
    report.train_loss = progress.mean_loss();
    report.train_accuracy = progress.accuracy();
    report.train_examples = progress.examples;
    report.train_seconds = seconds_since(epoch_start);

    // An update can overflow even from finite gradients. The next step's
    // checks usually notice, but nothing follows an epoch's last step, and
    // ReLUs can hide a bad weight from the loss: check the state itself
    // before the epoch is evaluated, reported or saved.
    const std::string bad = detail::first_non_finite_tensor(model);
    if (!bad.empty())
      throw training_diverged("opnorm::fit: model tensor '" + bad + "' holds NaN or infinity after epoch " +
                                  std::to_string(epoch + 1) + " of " + std::to_string(options.epochs) +
                                  " (learning rate " + detail::format_number(learning_rate) +
                                  "); the epoch was not reported to the callbacks, checkpoints already written "
                                  "were left as they were",
                              epoch, -1);

    if (test.size() > 0) {
      const evaluation e = evaluate(comm, model, test, options.eval_batch_size);
      report.has_test = true;
      report.test_loss = e.loss;
      report.test_accuracy = e.accuracy;
    }
    report.seconds = seconds_since(epoch_start);
    result.history.push_back(report);

    (detail::notify_epoch_end(callbacks, report, context), ...);
    bool stop = (false || ... || detail::asks_to_stop(callbacks));
    if (parallel) {  // rank 0's answer for every rank, or the ranks would part
      std::int64_t stop_word = stop ? 1 : 0;
      comm.broadcast(&stop_word, sizeof stop_word, 0);
      stop = stop_word != 0;
    }
    if (stop && epoch + 1 < options.epochs) {
      result.stopped_early = true;
      break;
    }
  }
  return result;
}

/// One process: fit over distributed::single_process.
template <class Model, class Method, class Optimizer, class Schedule, class T, class... Callbacks>
fit_result fit(Model& model, Method& method, Optimizer& optimizer, const Schedule& schedule,
               const dataset<T>& train, const dataset<T>& test, const fit_options& options,
               Callbacks&&... callbacks) {
  distributed::single_process one;
  return fit(one, model, method, optimizer, schedule, train, test, options, std::forward<Callbacks>(callbacks)...);
}

}  // namespace opnorm
