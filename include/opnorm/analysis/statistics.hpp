#pragma once
// Aggregation over test points: every curve of the paper's figures is a mean
// over test examples drawn with a shaded band of one standard error of that
// mean ("standard errors with respect to the number of test set samples").
//
// Layout used by every analysis function that returns samples of a curve:
//
//   curve_samples s;   s[p][i] = value at x-position p (a rank, a radius, an
//                      eps) for test example i
//
// so summarize(s) reduces over the inner index. Results computed batch by
// batch are joined with append_examples.
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace opnorm::analysis {

using curve_samples = std::vector<std::vector<double>>;

/// Mean and standard error of the mean of one set of samples.
struct sample_summary {
  double mean = 0;
  /// s / sqrt(count), s the sample standard deviation (divisor count - 1).
  /// NaN for a single sample: one sample says nothing about its spread, and
  /// a band of width 0 would claim it does.
  double standard_error = 0;
  std::size_t count = 0;
};

/// A curve with its band: mean[p] +- standard_error[p] over count[p] examples.
struct curve_summary {
  std::vector<double> mean;
  std::vector<double> standard_error;
  std::vector<std::size_t> count;

  std::vector<double> lower() const {
    std::vector<double> out(mean.size());
    for (std::size_t p = 0; p < mean.size(); ++p) out[p] = mean[p] - standard_error[p];
    return out;
  }
  std::vector<double> upper() const {
    std::vector<double> out(mean.size());
    for (std::size_t p = 0; p < mean.size(); ++p) out[p] = mean[p] + standard_error[p];
    return out;
  }
};

/// Two passes (mean, then squared deviations from it), so that samples with
/// a large common offset do not lose their spread to cancellation.
inline sample_summary summarize(const std::vector<double>& samples) {
  if (samples.empty()) throw std::invalid_argument("opnorm::analysis::summarize: no samples to summarize");
  sample_summary s;
  s.count = samples.size();
  const double n = static_cast<double>(s.count);
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / n;
  if (s.count < 2) {
    s.standard_error = std::numeric_limits<double>::quiet_NaN();
    return s;
  }
  double squares = 0;
  for (double v : samples) squares += (v - s.mean) * (v - s.mean);
  s.standard_error = std::sqrt(squares / (n - 1.0)) / std::sqrt(n);
  return s;
}

/// Summarizes every x-position of a curve (samples[p] = the samples at p).
inline curve_summary summarize(const curve_samples& samples) {
  curve_summary c;
  c.mean.reserve(samples.size());
  c.standard_error.reserve(samples.size());
  c.count.reserve(samples.size());
  for (std::size_t p = 0; p < samples.size(); ++p) {
    if (samples[p].empty())
      throw std::invalid_argument("opnorm::analysis::summarize: x-position " + std::to_string(p) +
                                  " has no samples");
    const sample_summary s = summarize(samples[p]);
    c.mean.push_back(s.mean);
    c.standard_error.push_back(s.standard_error);
    c.count.push_back(s.count);
  }
  return c;
}

/// Swaps the two indices of a rectangular table: per-example curves
/// (table[i][p]) become curve samples (out[p][i]) and back.
inline curve_samples transpose(const curve_samples& table) {
  if (table.empty()) return {};
  const std::size_t columns = table.front().size();
  curve_samples out(columns, std::vector<double>(table.size()));
  for (std::size_t r = 0; r < table.size(); ++r) {
    if (table[r].size() != columns)
      throw std::invalid_argument("opnorm::analysis::transpose: row " + std::to_string(r) + " has " +
                                  std::to_string(table[r].size()) + " entries, row 0 has " +
                                  std::to_string(columns));
    for (std::size_t c = 0; c < columns; ++c) out[c][r] = table[r][c];
  }
  return out;
}

/// Appends the examples of `more` to `into`, position by position (results of
/// the next batch of test points). An empty `into` takes `more` as it is.
inline void append_examples(curve_samples& into, const curve_samples& more) {
  if (into.empty()) {
    into = more;
    return;
  }
  if (into.size() != more.size())
    throw std::invalid_argument("opnorm::analysis::append_examples: curves with " + std::to_string(into.size()) +
                                " and " + std::to_string(more.size()) + " x-positions");
  for (std::size_t p = 0; p < into.size(); ++p) into[p].insert(into[p].end(), more[p].begin(), more[p].end());
}

}  // namespace opnorm::analysis
