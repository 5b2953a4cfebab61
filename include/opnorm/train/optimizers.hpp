#pragma once
// Optimizers: SGD (momentum, Nesterov, coupled weight decay) and Adam, with
// exactly the update rules of torch.optim.SGD and torch.optim.Adam, so a
// learning rate tuned in PyTorch means the same thing here.
//
// An optimizer is bound to a model's parameter list when it is constructed:
// that allocates its per-parameter buffers (momentum, Adam's moments) with
// the parameters' shapes and names, so the buffers exist, and can be
// restored from a checkpoint, before the first step. step() then walks the
// model's state().parameters in the same order, checks the names still
// match, and updates value from grad with one for_each_index kernel per
// tensor (raw pointers and scalars captured by value), so the same code runs
// on any backend.
//
// Every optimizer provides
//
//   explicit Optimizer(Model& model, Options options);
//   void step(Model& model);                  // one update from the gradients
//   double learning_rate() const;
//   void set_learning_rate(double lr);        // the trainer sets it every step
//   std::int64_t steps() const;               // updates taken so far
//   state_list<T, Backend> state();           // buffers + the step counter,
//                                             // for checkpoints (names below)
//   Optimizer(const Optimizer<T, B2>& other, Model& model);
//                                             // other moved to this backend,
//                                             // bound to model (the same
//                                             // network on this backend)
//
// State names: "<parameter>.momentum_buffer" (SGD), "<parameter>.exp_avg" and
// "<parameter>.exp_avg_sq" (Adam), as in PyTorch's optimizer state_dict, and
// the counter "step".
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../detail/options.hpp"
#include "../core/state.hpp"

namespace opnorm {

namespace detail {

// Enables the Model& overloads only for types with a state() member, so a
// state_list argument picks the state_list overloads.
template <class Model>
using if_model = decltype(std::declval<Model&>().state());

// The parameter names and shapes an optimizer was built for; step() checks
// the model it is given against them, because updating a different model's
// parameters with these buffers would be silently wrong.
template <class T, class B>
class bound_parameters {
 public:
  explicit bound_parameters(const state_list<T, B>& s) {
    for (const auto& p : s.parameters) {
      if (!p.grad)
        throw std::invalid_argument("opnorm optimizer: parameter '" + p.name + "' has no gradient tensor");
      names_.push_back(p.name);
      shapes_.push_back(p.value->shape());
    }
  }

  void check(const state_list<T, B>& s, const char* optimizer) const {
    if (s.parameters.size() != names_.size())
      throw std::invalid_argument(std::string("opnorm::") + optimizer + ": built for " +
                                  std::to_string(names_.size()) + " parameters, the model has " +
                                  std::to_string(s.parameters.size()));
    for (std::size_t i = 0; i < names_.size(); ++i) {
      const auto& p = s.parameters[i];
      if (p.name != names_[i] || p.value->shape() != shapes_[i] || p.grad->shape() != shapes_[i])
        throw std::invalid_argument(std::string("opnorm::") + optimizer + ": parameter " +
                                    std::to_string(i) + " is '" + p.name + "' " +
                                    shape_string(p.value->shape()) + ", the optimizer was built for '" +
                                    names_[i] + "' " + shape_string(shapes_[i]));
    }
  }

  std::size_t size() const { return names_.size(); }
  const std::string& name(std::size_t i) const { return names_[i]; }
  const shape_t& shape(std::size_t i) const { return shapes_[i]; }

 private:
  std::vector<std::string> names_;
  std::vector<shape_t> shapes_;
};

// Checks that an optimizer being moved to another backend is bound to the
// same parameter names and shapes as the model it is moved onto.
template <class T, class B, class B2>
void require_same_binding(const bound_parameters<T, B>& from, const bound_parameters<T, B2>& to,
                          const char* optimizer) {
  bool same = from.size() == to.size();
  for (std::size_t i = 0; same && i < from.size(); ++i)
    same = from.name(i) == to.name(i) && from.shape(i) == to.shape(i);
  require(same, optimizer,
          "cannot move the optimizer onto a model with other parameters than the one it was built for");
}

// What sgd and adam share: the options, the parameter binding, the step
// counter and the per-parameter buffers (named "<parameter>.<kind>"), with
// the constructors, accessors, step(), state() and the move from another
// backend built on them. Each optimizer inherits the constructors and adds
// only what is its own, as static or public members:
//
//   static constexpr const char* name;
//   static void validate(const Options& o);       // throws for a bad option
//   static std::vector<const char*> buffer_kinds(const Options& o);
//   void update(const state_list<T, Backend>& s, const Options& o);
//
// update is the rule, one kernel per parameter, reading the buffers and
// steps() as they stand before the step; it is public because nvcc rejects
// extended lambdas in private and protected member functions.
//
// The buffers of parameter i are buffers_[i * kinds + k], one per kind, so
// state() lists them per parameter, kinds in the order buffer_kinds gives,
// as PyTorch's optimizer state_dict does.
template <class Optimizer, class T, class Backend, class Options>
class optimizer_base {
 public:
  using scalar = T;
  using backend_type = Backend;
  using options_type = Options;

  template <class Model, class = if_model<Model>>
  optimizer_base(Model& model, const Options& options) : optimizer_base(model.state(), options) {}

  optimizer_base(const state_list<T, Backend>& parameters, const Options& options)
      : options_(options), bound_(parameters) {
    Optimizer::validate(options);
    kinds_ = Optimizer::buffer_kinds(options);
    for (std::size_t i = 0; i < bound_.size(); ++i)
      for (std::size_t k = 0; k < kinds_.size(); ++k) buffers_.emplace_back(bound_.shape(i), T(0));
  }

  /// other, an optimizer on backend B2, moved to this backend and bound to
  /// model (the network other was stepping, moved here as well, e.g. with
  /// opnorm::to): same options, buffers copied through the host, same step
  /// count (Adam's bias corrections depend on it), so training continues as
  /// it would have on B2.
  template <class Other, class B2, class Model, class = if_model<Model>>
  optimizer_base(const optimizer_base<Other, T, B2, Options>& other, Model& model)
      : optimizer_base(model.state(), other.options_) {
    require_same_binding(other.bound_, bound_, Optimizer::name);
    for (std::size_t i = 0; i < buffers_.size(); ++i) buffers_[i] = copy_to_backend<Backend>(other.buffers_[i]);
    steps_ = other.steps_;
  }
  template <class, class, class, class>
  friend class optimizer_base;  // the moving constructor reads the other backend's members

  const Options& options() const { return options_; }
  double learning_rate() const { return options_.learning_rate; }
  void set_learning_rate(double lr) { options_.learning_rate = lr; }
  std::int64_t steps() const { return steps_; }

  template <class Model, class = if_model<Model>>
  void step(Model& model) {
    step(model.state());
  }

  /// One update from the gradients of s, which must be the parameters the
  /// optimizer was built for.
  void step(const state_list<T, Backend>& s) {
    bound_.check(s, Optimizer::name);
    static_cast<Optimizer&>(*this).update(s, options_);
    ++steps_;
  }

  state_list<T, Backend> state() {
    state_list<T, Backend> s;
    for (std::size_t i = 0; i < buffers_.size(); ++i)
      s.buffers.push_back({bound_.name(i / kinds_.size()) + "." + kinds_[i % kinds_.size()], &buffers_[i], nullptr});
    s.counters.push_back({"step", &steps_});
    return s;
  }

 protected:
  // The buffer of the given kind (index into buffer_kinds) of parameter i.
  tensor<T, Backend>& buffer(std::size_t i, std::size_t kind) { return buffers_[i * kinds_.size() + kind]; }

 private:
  Options options_;
  bound_parameters<T, Backend> bound_;
  std::vector<const char*> kinds_;
  std::vector<tensor<T, Backend>> buffers_;
  std::int64_t steps_ = 0;
};

}  // namespace detail

// ---------------------------------------------------------------------------

struct sgd_options {
  double learning_rate = 0.01;  // the trainer overwrites it from the schedule
  double momentum = 0.0;
  double weight_decay = 0.0;    // coupled: added to the gradient, as in PyTorch
  bool nesterov = false;
};

/// torch.optim.SGD with dampening 0:
///   g = grad + weight_decay * w
///   buf = g on the first step, buf = momentum * buf + g afterwards
///   d = nesterov ? g + momentum * buf : buf          (d = g without momentum)
///   w -= learning_rate * d
template <class T, class Backend = backend::cpu>
class sgd : public detail::optimizer_base<sgd<T, Backend>, T, Backend, sgd_options> {
 public:
  using detail::optimizer_base<sgd<T, Backend>, T, Backend, sgd_options>::optimizer_base;

  static constexpr const char* name = "sgd";

  static void validate(const sgd_options& o) {
    detail::require_real(o.learning_rate, "sgd", "learning_rate", detail::at_least(0));
    detail::require_real(o.momentum, "sgd", "momentum", detail::half_open_interval(0, 1));
    detail::require_real(o.weight_decay, "sgd", "weight_decay", detail::at_least(0));
    detail::require(!o.nesterov || o.momentum > 0, "sgd", "Nesterov momentum needs momentum > 0");
  }
  // Without momentum SGD keeps no buffers.
  static std::vector<const char*> buffer_kinds(const sgd_options& o) {
    if (o.momentum > 0) return {"momentum_buffer"};
    return {};
  }

  void update(const state_list<T, Backend>& s, const sgd_options& o) {
    const T lr = static_cast<T>(o.learning_rate);
    const T wd = static_cast<T>(o.weight_decay);
    const T mu = static_cast<T>(o.momentum);
    const bool use_momentum = o.momentum > 0;
    const bool nesterov = o.nesterov;
    // PyTorch starts the momentum buffer at the first gradient, not at zero
    // (which would shrink the first steps by (1 - momentum)).
    const bool first = this->steps() == 0;
    for (std::size_t t = 0; t < s.parameters.size(); ++t) {
      T* w = s.parameters[t].value->data();
      const T* grad = s.parameters[t].grad->data();
      T* buf = use_momentum ? this->buffer(t, 0).data() : nullptr;
      backend_ops<Backend>::for_each_index(s.parameters[t].value->size(), [=] OPNORM_HD(index_t i) {
        const T g = grad[i] + wd * w[i];
        T d = g;
        if (buf) {
          const T b = first ? g : mu * buf[i] + g;
          buf[i] = b;
          d = nesterov ? g + mu * b : b;
        }
        w[i] -= lr * d;
      });
    }
  }
};

template <class Model>
sgd(Model&, sgd_options) -> sgd<typename Model::scalar, typename Model::backend_type>;

// ---------------------------------------------------------------------------

struct adam_options {
  double learning_rate = 1e-3;  // the trainer overwrites it from the schedule
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;    // coupled (torch.optim.Adam, not AdamW)
};

/// torch.optim.Adam (amsgrad off). With t the step number starting at 1:
///   g = grad + weight_decay * w
///   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
///   w -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)
/// epsilon is added outside the square root and after the bias correction
/// of v, which is what PyTorch does and what its tuned epsilons assume.
template <class T, class Backend = backend::cpu>
class adam : public detail::optimizer_base<adam<T, Backend>, T, Backend, adam_options> {
 public:
  using detail::optimizer_base<adam<T, Backend>, T, Backend, adam_options>::optimizer_base;

  static constexpr const char* name = "adam";

  static void validate(const adam_options& o) {
    detail::require_real(o.learning_rate, "adam", "learning_rate", detail::at_least(0));
    detail::require_real(o.beta1, "adam", "beta1", detail::half_open_interval(0, 1));
    detail::require_real(o.beta2, "adam", "beta2", detail::half_open_interval(0, 1));
    detail::require_real(o.epsilon, "adam", "epsilon", detail::greater_than(0));
    detail::require_real(o.weight_decay, "adam", "weight_decay", detail::at_least(0));
  }
  static std::vector<const char*> buffer_kinds(const adam_options&) { return {"exp_avg", "exp_avg_sq"}; }

  void update(const state_list<T, Backend>& s, const adam_options& o) {
    const double t = static_cast<double>(this->steps() + 1);
    // Bias corrections in double on the host: beta^t for large t is where
    // float would lose digits first.
    const T step_size = static_cast<T>(o.learning_rate / (1.0 - std::pow(o.beta1, t)));
    const T correction2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(o.beta2, t)));
    const T b1 = static_cast<T>(o.beta1), b2 = static_cast<T>(o.beta2);
    const T one_minus_b1 = static_cast<T>(1.0 - o.beta1);
    const T one_minus_b2 = static_cast<T>(1.0 - o.beta2);
    const T eps = static_cast<T>(o.epsilon);
    const T wd = static_cast<T>(o.weight_decay);
    for (std::size_t k = 0; k < s.parameters.size(); ++k) {
      T* w = s.parameters[k].value->data();
      const T* grad = s.parameters[k].grad->data();
      T* m = this->buffer(k, 0).data();
      T* v = this->buffer(k, 1).data();
      backend_ops<Backend>::for_each_index(s.parameters[k].value->size(), [=] OPNORM_HD(index_t i) {
        const T g = grad[i] + wd * w[i];
        const T mi = b1 * m[i] + one_minus_b1 * g;
        const T vi = b2 * v[i] + one_minus_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        w[i] -= step_size * mi / (std::sqrt(vi) / correction2_sqrt + eps);
      });
    }
  }
};

template <class Model>
adam(Model&, adam_options) -> adam<typename Model::scalar, typename Model::backend_type>;

}  // namespace opnorm
