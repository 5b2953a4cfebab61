#pragma once
// tensor<T, Backend>: an owning, contiguous, row-major N-d buffer and its shape.
//
// A tensor is a concrete container, never an expression: power-iteration
// vectors and perturbations are stored, not recomputed. Element access from
// the host is only offered by backends whose memory the host can read.
//
// The storage comes from the backend (backend_ops<Backend>::storage<T>), so
// this header knows no container; the cpu backend is included because it is
// the default.
#include <algorithm>
#include <initializer_list>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend/backend.hpp"
#include "../backend/cpu.hpp"

namespace opnorm {

using shape_t = std::vector<index_t>;

inline index_t shape_size(const shape_t& s) {
  return std::accumulate(s.begin(), s.end(), index_t{1}, std::multiplies<index_t>());
}

inline std::string shape_string(const shape_t& s) {
  std::ostringstream o;
  o << '(';
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ')';
  return o.str();
}

template <class T, class Backend = backend::cpu>
class tensor {
  static_assert(backend::check_backend<Backend>::value && backend::is_backend<Backend>::value,
                "the second template argument of opnorm::tensor must be a backend tag, such as "
                "opnorm::backend::cpu or opnorm::backend::thrust<opnorm::backend::system::omp>");
  static_assert(std::is_floating_point<T>::value || std::is_integral<T>::value,
                "opnorm::tensor holds arithmetic scalars only");

 public:
  using value_type = T;
  using backend_type = Backend;
  using ops = backend_ops<Backend>;
  using storage_type = typename ops::template storage<T>;
  /// Whether the host may dereference data() (operator[], operator()).
  static constexpr bool host_accessible = ops::host_accessible;

  tensor() = default;
  explicit tensor(shape_t shape) : shape_(std::move(shape)) { allocate(); }
  tensor(shape_t shape, T value) : shape_(std::move(shape)) {
    allocate();
    fill(value);
  }
  tensor(std::initializer_list<index_t> shape) : tensor(shape_t(shape)) {}

  const shape_t& shape() const { return shape_; }
  index_t rank() const { return static_cast<index_t>(shape_.size()); }
  index_t dim(index_t i) const { return shape_.at(static_cast<std::size_t>(i)); }
  index_t size() const { return shape_size(shape_); }
  bool empty() const { return size() == 0; }
  /// Elements per example: the product of all dimensions but the first.
  index_t example_size() const { return shape_.empty() ? 0 : size() / shape_[0]; }

  T* data() { return ops::data(storage_); }
  const T* data() const { return ops::data(storage_); }

  /// Resizes to a new shape; the contents are unspecified afterwards unless
  /// the number of elements is unchanged. Storage only grows: a tensor that
  /// alternates between sizes (a network's two gradient scratch tensors, a
  /// layer's workspace) keeps one buffer instead of freeing it and faulting
  /// a new one in every time (measured: 7-9% of a training step in page
  /// faults and munmap before).
  void resize(const shape_t& shape) {
    if (shape == shape_) return;
    check_dimensions(shape);
    shape_ = shape;
    // Compare with the storage, not the old shape: a default tensor has shape
    // () whose product is 1 but holds no element.
    if (static_cast<index_t>(storage_.size()) < size()) allocate();
  }

  /// Reinterprets the same elements with another shape of equal size.
  tensor& reshape(const shape_t& shape) {
    if (shape_size(shape) != size())
      throw std::invalid_argument("opnorm::tensor::reshape: cannot view " + shape_string(shape_) +
                                  " as " + shape_string(shape));
    shape_ = shape;
    return *this;
  }
  tensor reshaped(const shape_t& shape) const& {
    tensor t(*this);
    t.reshape(shape);
    return t;
  }
  tensor reshaped(const shape_t& shape) && {
    reshape(shape);
    return std::move(*this);
  }

  void fill(T value) { ops::fill(data(), size(), value); }
  void set_zero() { fill(T(0)); }

  // ---- host access (only where the backend's memory is host memory) ----
  T& operator[](index_t i) {
    static_assert(host_accessible, "element access needs host memory: copy the tensor to the host first (to_vector, or to<backend::cpu>)");
    return data()[i];
  }
  const T& operator[](index_t i) const {
    static_assert(host_accessible, "element access needs host memory: copy the tensor to the host first (to_vector, or to<backend::cpu>)");
    return data()[i];
  }
  template <class... I>
  T& operator()(I... idx) {
    return (*this)[offset(idx...)];
  }
  template <class... I>
  const T& operator()(I... idx) const {
    return (*this)[offset(idx...)];
  }

  /// All elements, copied into a std::vector on the host.
  std::vector<T> to_vector() const {
    std::vector<T> v(static_cast<std::size_t>(size()));
    ops::copy_to_host(data(), size(), v.data());
    return v;
  }
  static tensor from_vector(shape_t shape, const std::vector<T>& values) {
    tensor t(std::move(shape));
    if (static_cast<index_t>(values.size()) != t.size())
      throw std::invalid_argument("opnorm::tensor::from_vector: " + std::to_string(values.size()) +
                                  " values for shape " + shape_string(t.shape()));
    ops::copy_from_host(values.data(), t.size(), t.data());
    return t;
  }

  friend bool same_shape(const tensor& a, const tensor& b) { return a.shape_ == b.shape_; }

 private:
  static void check_dimensions(const shape_t& shape) {
    for (index_t d : shape)
      if (d < 0) throw std::invalid_argument("opnorm::tensor: negative dimension in " + shape_string(shape));
  }
  void allocate() {
    check_dimensions(shape_);
    storage_ = ops::template allocate<T>(size());
  }
  template <class... I>
  index_t offset(I... idx) const {
    const index_t ids[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t d = 0; d < sizeof...(I); ++d) off = off * shape_[d] + ids[d];
    return off;
  }

  shape_t shape_;
  storage_type storage_;
};

/// A copy of t on backend B2, made through host memory: no backend can read
/// another's memory directly (a CUDA pointer is not a host pointer), and
/// to_vector / from_vector are the two operations every backend offers.
/// t must hold its elements: a default-constructed tensor (shape (), no
/// storage) is not copied by anyone, so the layers skip their absent biases.
template <class B2, class T, class B>
tensor<T, B2> copy_to_backend(const tensor<T, B>& t) {
  return tensor<T, B2>::from_vector(t.shape(), t.to_vector());
}

}  // namespace opnorm
