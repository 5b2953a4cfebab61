#pragma once
// Checks of user-given options, shared by methods, attacks, optimizers,
// schedules and the kernel, so that every one of them refuses a bad value the
// same way: std::invalid_argument("opnorm::<who>: <name> is <value>; it must
// be <rule>").
//
// Real-valued options go through require_real, which also refuses NaN and
// infinity. A plain `eps < 0` test lets NaN through (every comparison with
// NaN is false), and a NaN radius then turns an attack into a silent no-op
// with a plausible-looking robust accuracy.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

namespace opnorm::detail {

/// Throws std::invalid_argument("opnorm::<who>: <what>") unless ok.
inline void require(bool ok, const char* who, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("opnorm::") + who + ": " + what);
}

/// An interval of the real line; each end open or closed. high = infinity
/// with an open end means "no upper bound".
struct real_interval {
  double low, high;
  bool low_open, high_open;
};

inline real_interval at_least(double low) { return {low, std::numeric_limits<double>::infinity(), false, true}; }
inline real_interval greater_than(double low) { return {low, std::numeric_limits<double>::infinity(), true, true}; }
inline real_interval closed_interval(double low, double high) { return {low, high, false, false}; }
inline real_interval half_open_interval(double low, double high) { return {low, high, false, true}; }
inline real_interval open_closed_interval(double low, double high) { return {low, high, true, false}; }

/// The shortest text that reads back as v ("0.05", "1e-08", "nan", "inf").
inline std::string option_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char text[64];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, v);
    if (std::strtod(text, nullptr) == v) break;
  }
  return text;
}

inline std::string describe(const real_interval& r) {
  if (std::isinf(r.high)) return std::string(r.low_open ? "> " : ">= ") + option_number(r.low);
  return std::string("in ") + (r.low_open ? "(" : "[") + option_number(r.low) + ", " + option_number(r.high) +
         (r.high_open ? ")" : "]");
}

inline bool contains(const real_interval& r, double v) {
  return std::isfinite(v) && (r.low_open ? v > r.low : v >= r.low) && (r.high_open ? v < r.high : v <= r.high);
}

/// Throws unless value is finite and lies in r, naming who, the option and
/// the rule: "opnorm::adversarial: eps is nan; it must be a finite number >= 0".
inline void require_real(double value, const char* who, const char* name, const real_interval& r) {
  if (!contains(r, value))
    throw std::invalid_argument(std::string("opnorm::") + who + ": " + name + " is " + option_number(value) +
                                "; it must be a finite number " + describe(r));
}

/// Throws unless value >= low (counts: iterations, restarts, batch sizes).
inline void require_count(long long value, const char* who, const char* name, long long low) {
  if (value < low)
    throw std::invalid_argument(std::string("opnorm::") + who + ": " + name + " is " + std::to_string(value) +
                                "; it must be at least " + std::to_string(low));
}

/// Throws unless the box [low, high] that iterates are clipped to is finite
/// and not empty (only checked when clipping is on).
inline void require_box(bool clip, double low, double high, const char* who) {
  if (!clip) return;
  if (!(std::isfinite(low) && std::isfinite(high) && low <= high))
    throw std::invalid_argument(std::string("opnorm::") + who + ": the box [" + option_number(low) + ", " +
                                option_number(high) + "] must have finite ends with box_min <= box_max");
}

}  // namespace opnorm::detail
