#pragma once
// The callbacks that come with the trainer: progress (a status line),
// csv_log (one row per epoch), checkpoint_each_epoch (a resumable snapshot)
// and early_stop (patience on test accuracy). See train/reports.hpp for what
// a callback is; each of these is a plain object passed to fit() by value or
// by reference.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>  // isatty
#endif

#include "../io/atomic_file.hpp"
#include "reports.hpp"
#include "training_checkpoint.hpp"

namespace opnorm {

namespace detail {

/// "37s", "4m12s", "1h02m".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char text[32];
  if (s < 60)
    std::snprintf(text, sizeof text, "%lds", s);
  else if (s < 3600)
    std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return text;
}

/// Whether a stream writes to a terminal: only std::cout, std::cerr and
/// std::clog are known to be tied to file descriptors.
inline bool is_terminal(const std::ostream& out) {
#if defined(__unix__) || defined(__APPLE__)
  if (&out == &std::cout) return ::isatty(STDOUT_FILENO) == 1;
  if (&out == &std::cerr || &out == &std::clog) return ::isatty(STDERR_FILENO) == 1;
#else
  (void)out;
#endif
  return false;
}

/// Writes text to path atomically (io/atomic_file.hpp), so readers (a
/// plotting script polling the log) never see half a file. Throws
/// std::runtime_error naming who and the file.
inline void write_text_atomically(const std::filesystem::path& path, const std::string& text, const char* who) {
  try {
    write_file_atomically(path, text);
  } catch (const file_write_error& e) {
    throw std::runtime_error(std::string("opnorm::") + who + ": " + e.what());
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------

/// A status line every `every_steps` steps and a summary line per epoch:
///   epoch 3/10  step 200/469  loss 0.3124  acc 88.91%  lr 0.0412  1534 img/s  ETA 4m12s
/// On a terminal the step line is redrawn in place with '\r'; anywhere else
/// (a log file, a pipe) every status line is a line of its own.
class progress {
 public:
  explicit progress(std::ostream& out = std::cerr, index_t every_steps = 50)
      : progress(out, every_steps, detail::is_terminal(out)) {}
  progress(std::ostream& out, index_t every_steps, bool redraw_in_place)
      : out_(&out), every_(every_steps), redraw_(redraw_in_place) {
    if (every_steps < 1) throw std::invalid_argument("opnorm::progress: every_steps must be >= 1");
  }

  void on_train_begin(const run_info& run) {
    start_ = clock::now();
    std::ostringstream o;
    o << "training " << run.method << ": " << run.train_examples << " examples, " << run.steps_per_epoch
      << " steps of " << run.batch_size << " per epoch, epochs " << run.start_epoch + 1 << "-" << run.epochs;
    if (run.start_epoch > 0) o << " (resumed after epoch " << run.start_epoch << ")";
    o << ", seed " << run.seed;
    if (run.test_examples > 0) o << ", " << run.test_examples << " test examples";
    *out_ << o.str() << '\n' << std::flush;
  }

  void on_step_end(const step_report& s) {
    const bool last = s.step + 1 == s.steps_per_epoch;
    if ((s.step + 1) % every_ != 0 || last) return;  // the epoch line covers the last step
    const double done = static_cast<double>((s.epoch - s.start_epoch) * s.steps_per_epoch + s.step + 1);
    const double total = static_cast<double>((s.epochs - s.start_epoch) * s.steps_per_epoch);
    const double elapsed = seconds_since(start_);
    std::ostringstream o;
    o << "epoch " << s.epoch + 1 << '/' << s.epochs << "  step " << s.step + 1 << '/' << s.steps_per_epoch
      << std::fixed << std::setprecision(4) << "  loss " << s.loss << std::setprecision(2) << "  acc "
      << 100 * s.accuracy << '%' << std::defaultfloat << std::setprecision(3) << "  lr " << s.learning_rate
      << std::fixed << std::setprecision(0) << "  " << static_cast<double>(s.examples) / s.seconds << " img/s"
      << "  ETA " << detail::format_duration(elapsed / done * (total - done));
    emit(o.str(), false);
  }

  template <class Context>
  void on_epoch_end(const epoch_report& e, Context&) {
    const double done = static_cast<double>(e.epoch + 1 - e.start_epoch);
    const double left = static_cast<double>(e.epochs - e.epoch - 1);
    std::ostringstream o;
    o << "epoch " << e.epoch + 1 << '/' << e.epochs << " in " << detail::format_duration(e.seconds) << std::fixed
      << std::setprecision(4) << "  train loss " << e.train_loss << std::setprecision(2) << " acc "
      << 100 * e.train_accuracy << '%';
    if (e.has_test)
      o << std::setprecision(4) << "  test loss " << e.test_loss << std::setprecision(2) << " acc "
        << 100 * e.test_accuracy << '%';
    o << std::defaultfloat << std::setprecision(3) << "  lr " << e.learning_rate << std::fixed
      << std::setprecision(0) << "  " << static_cast<double>(e.train_examples) / e.train_seconds << " img/s";
    if (left > 0) o << "  ETA " << detail::format_duration(seconds_since(start_) / done * left);
    emit(o.str(), true);
  }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t) {
    return std::chrono::duration<double>(clock::now() - t).count();
  }

  void emit(const std::string& line, bool final_line) {
    if (redraw_)
      *out_ << '\r' << line << "\x1b[K" << (final_line ? "\n" : "");  // ESC[K clears a longer previous line
    else
      *out_ << line << '\n';
    *out_ << std::flush;
  }

  std::ostream* out_;
  index_t every_;
  bool redraw_;
  clock::time_point start_ = clock::now();
};

// ---------------------------------------------------------------------------

/// One row per epoch in a CSV file,
///   epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds
/// with epochs counted from 1, accuracies as fractions, test columns empty
/// without a test set, and seconds the epoch's wall time. The whole file is
/// rewritten through a temporary file and a rename after every epoch, so it
/// is always complete. A resumed run keeps the rows of the epochs it did not
/// repeat.
class csv_log {
 public:
  static constexpr const char* header =
      "epoch,train_loss,train_accuracy,test_loss,test_accuracy,learning_rate,seconds";

  explicit csv_log(std::filesystem::path path) : path_(std::move(path)) {}

  const std::filesystem::path& path() const { return path_; }

  void on_train_begin(const run_info& run) {
    rows_.clear();
    if (run.start_epoch == 0) return;
    std::ifstream in(path_);
    if (!in) return;  // resumed into a fresh output folder: start a new log
    std::string line;
    std::getline(in, line);
    if (line != header)
      throw std::runtime_error("opnorm::csv_log: '" + path_.string() + "' exists but its first line is not '" +
                               std::string(header) + "'; refusing to overwrite it");
    while (std::getline(in, line)) {
      const long long epoch = std::atoll(line.c_str());
      if (epoch >= 1 && epoch <= run.start_epoch) rows_.push_back(line);
    }
  }

  template <class Context>
  void on_epoch_end(const epoch_report& e, Context&) {
    std::ostringstream row;
    row << std::setprecision(9) << e.epoch + 1 << ',' << e.train_loss << ',' << e.train_accuracy << ',';
    if (e.has_test) row << e.test_loss << ',' << e.test_accuracy;
    else row << ',';
    row << ',' << e.learning_rate << ',' << std::setprecision(4) << e.seconds;
    rows_.push_back(row.str());
    std::string text = std::string(header) + '\n';
    for (const auto& r : rows_) text += r + '\n';
    detail::write_text_atomically(path_, text, "csv_log");
  }

 private:
  std::filesystem::path path_;
  std::vector<std::string> rows_;
};

// ---------------------------------------------------------------------------

/// After every epoch, a training checkpoint (model, optimizer state, method
/// state, and metadata epochs_completed / seed / method / optimizer plus the
/// given metadata) written atomically to path, replacing the previous one.
/// See train/training_checkpoint.hpp for the layout and for resuming.
class checkpoint_each_epoch {
 public:
  /// every_steps > 0 also writes a checkpoint after every every_steps-th
  /// step of the run (counted across epochs), recording the position inside
  /// the epoch (train/training_checkpoint.hpp), so a crash loses at most
  /// that many steps instead of an epoch; a run resumed from it is
  /// bit-identical to an unbroken one, like one resumed at an epoch's end.
  explicit checkpoint_each_epoch(std::filesystem::path path, safetensors::metadata_map metadata = {},
                                 index_t every_steps = 0)
      : path_(std::move(path)), metadata_(std::move(metadata)), every_steps_(every_steps) {
    if (every_steps < 0)
      throw std::invalid_argument("opnorm::checkpoint_each_epoch: every_steps must be >= 0 (0: at epoch ends only)");
  }

  const std::filesystem::path& path() const { return path_; }

  template <class Context>
  void on_step_end(const step_report& s, Context& c) {
    if (every_steps_ == 0 || s.step + 1 == s.steps_per_epoch) return;  // the epoch's own checkpoint follows
    const index_t run_step = s.epoch * s.steps_per_epoch + s.step + 1;
    if (run_step % every_steps_ != 0) return;
    save_training_checkpoint(path_, c.model, c.method, c.optimizer, s.epoch, c.options.seed, metadata_, s.progress);
  }

  template <class Context>
  void on_epoch_end(const epoch_report& e, Context& c) {
    save_training_checkpoint(path_, c.model, c.method, c.optimizer, e.epoch + 1, c.options.seed, metadata_);
  }

 private:
  std::filesystem::path path_;
  safetensors::metadata_map metadata_;
  index_t every_steps_;
};

// ---------------------------------------------------------------------------

/// Stops training when test accuracy has not improved by more than
/// min_delta for `patience` consecutive epochs. Needs a test set. Its
/// counters start afresh in a resumed run.
class early_stop {
 public:
  explicit early_stop(index_t patience, double min_delta = 0.0) : patience_(patience), min_delta_(min_delta) {
    if (patience < 1) throw std::invalid_argument("opnorm::early_stop: patience must be >= 1");
  }

  void on_train_begin(const run_info& run) {
    if (run.test_examples == 0)
      throw std::invalid_argument("opnorm::early_stop: watches test accuracy, but fit was given no test set");
    best_accuracy_ = -1;
    best_epoch_ = -1;
    epochs_without_improvement_ = 0;
  }

  template <class Context>
  void on_epoch_end(const epoch_report& e, Context&) {
    if (e.test_accuracy > best_accuracy_ + min_delta_) {
      best_accuracy_ = e.test_accuracy;
      best_epoch_ = e.epoch;
      epochs_without_improvement_ = 0;
    } else {
      ++epochs_without_improvement_;
    }
  }

  bool stop_requested() const { return epochs_without_improvement_ >= patience_; }
  double best_accuracy() const { return best_accuracy_; }
  index_t best_epoch() const { return best_epoch_; }  // from 0; -1 before the first epoch

 private:
  index_t patience_;
  double min_delta_;
  double best_accuracy_ = -1;
  index_t best_epoch_ = -1;
  index_t epochs_without_improvement_ = 0;
};

}  // namespace opnorm
