// Must not compile: this backend provides everything but the GEMMs, and the
// check names what is missing.
#include <cstring>
#include <vector>

#include <opnorm/core/tensor.hpp>
struct half_backend {};
template <>
struct opnorm::backend_ops<half_backend> {
  template <class T>
  using storage = std::vector<T>;
  static constexpr bool host_accessible = true;
  template <class T>
  static storage<T> allocate(index_t n) { return storage<T>(static_cast<std::size_t>(n)); }
  template <class T>
  static T* data(storage<T>& s) { return s.data(); }
  template <class T>
  static const T* data(const storage<T>& s) { return s.data(); }
  template <class F>
  static void for_each_index(index_t n, F f) { for (index_t i = 0; i < n; ++i) f(i); }
  template <class F>
  static void for_each_segment(index_t n, index_t, F f) { for_each_index(n, f); }
  template <class R, class F>
  static R sum(index_t n, F f) { R s = 0; for (index_t i = 0; i < n; ++i) s += f(i); return s; }
  template <class T>
  static void fill(T* x, index_t n, T v) { for (index_t i = 0; i < n; ++i) x[i] = v; }
  template <class T>
  static void copy(const T* s, index_t n, T* d) { std::memcpy(d, s, sizeof(T) * n); }
  template <class T>
  static void copy_to_host(const T* s, index_t n, T* d) { copy(s, n, d); }
  template <class T>
  static void copy_from_host(const T* s, index_t n, T* d) { copy(s, n, d); }
};
opnorm::tensor<float, half_backend> t;
