#pragma once
// What the trainer tells its callbacks, and what a callback is.
//
// A callback is any object with one or more of these members (each one is
// optional; the trainer calls only those a callback has):
//
//   void on_train_begin(const run_info& run);
//   void on_step_end(const step_report& step);
//   template <class Context> void on_step_end(const step_report& step, Context& context);
//   template <class Context> void on_epoch_end(const epoch_report& epoch, Context& context);
//   bool stop_requested() const;     // asked after every on_epoch_end
//
// Context is training_context<Model, Method, Optimizer> (below): references
// to what is being trained, so a checkpoint callback can save it. Epochs and
// steps are counted from 0 in every struct here; printed and logged epochs
// are counted from 1 (epoch 1 is the first one), and "epochs completed" is
// what a checkpoint records.
#include <cstdint>
#include <string>

#include "../detail/config.hpp"

namespace opnorm {

struct fit_options;

/// How far a run has come inside an epoch: the batches done and the exact
/// running sums the epoch's report is made of. A checkpoint written in the
/// middle of an epoch stores it, so a run resumed there reports (and
/// trains) exactly what an unbroken run would.
struct epoch_progress {
  index_t steps_completed = 0;
  double loss_sum = 0;      // sum over the batches done of batch loss * batch examples
  index_t correct = 0;      // examples classified correctly in those batches
  index_t examples = 0;     // examples in those batches

  // The running means the step and epoch reports give.
  double mean_loss() const { return loss_sum / static_cast<double>(examples); }
  double accuracy() const { return static_cast<double>(correct) / static_cast<double>(examples); }
};

/// Announced once before the first step.
struct run_info {
  std::string method;
  index_t start_epoch = 0;     // epochs already completed (non-zero after a resume)
  index_t epochs = 0;          // the run ends after this many epochs in total
  index_t steps_per_epoch = 0;
  index_t batch_size = 0;
  index_t train_examples = 0;
  index_t test_examples = 0;   // 0: no evaluation
  std::uint64_t seed = 0;
};

/// After every optimizer step. Running means cover the epoch so far.
struct step_report {
  index_t epoch = 0, epochs = 0;
  index_t step = 0, steps_per_epoch = 0;
  index_t start_epoch = 0;
  double batch_loss = 0;       // this batch's loss
  double loss = 0;             // mean loss over the epoch so far (weighted by examples)
  double accuracy = 0;         // fraction correct over the epoch so far
  index_t examples = 0;        // examples seen this epoch
  double learning_rate = 0;    // the rate this step used
  double seconds = 0;          // wall time since the epoch began
  epoch_progress progress;     // the exact sums behind loss and accuracy, steps_completed = step + 1
};

/// After every epoch, once the test set (if any) has been evaluated.
struct epoch_report {
  index_t epoch = 0, epochs = 0;
  index_t start_epoch = 0;
  double train_loss = 0, train_accuracy = 0;  // means over the epoch's batches, in train mode
  bool has_test = false;
  double test_loss = 0, test_accuracy = 0;    // eval mode, whole test set
  double learning_rate = 0;                   // the rate of the epoch's last step
  index_t train_examples = 0;
  double train_seconds = 0;                   // training steps only
  double seconds = 0;                         // training and evaluation
};

/// References to everything being trained, handed to on_epoch_end and to
/// the two-argument on_step_end.
template <class Model, class Method, class Optimizer>
struct training_context {
  Model& model;
  Method& method;
  Optimizer& optimizer;
  const fit_options& options;
};

}  // namespace opnorm
