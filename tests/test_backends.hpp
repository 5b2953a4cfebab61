#pragma once
// The backends every numerical test runs on. The tests are written once,
// as TEST_CASE_TEMPLATE over this list, so a layer, the kernel, an attack
// or a method is checked by the same finite differences, SVDs and theorems
// on each backend. The Thrust host systems run the very Thrust kernels a
// GPU runs, on the CPU, which is how the Thrust backend is tested on a
// machine without a GPU.
#include <opnorm/backend/cpu.hpp>
#include <opnorm/backend/thrust.hpp>

#define OPNORM_TEST_BACKENDS \
  opnorm::backend::cpu, opnorm::backend::thrust<opnorm::backend::system::omp>, \
      opnorm::backend::thrust<opnorm::backend::system::cpp>

#include <tuple>
#include <utility>

namespace opnorm::testing {

/// A policy (a norm, a loss, ...) paired with a backend, for tests templated
/// on both: doctest's TEST_CASE_TEMPLATE takes one type parameter, so a test
/// over norms x backends takes one pair C and reads C::policy, C::backend.
/// Each pair is then its own test case, named after both types.
template <class Policy, class Backend>
struct on_backend {
  using policy = Policy;
  using backend = Backend;
};

template <class Policy, class... Backends>
using policy_on_backends = std::tuple<on_backend<Policy, Backends>...>;

/// backend_list<Bs...>::cross<Ps...> is std::tuple<on_backend<P, B>...> for
/// every P in Ps and B in Bs, for TEST_CASE_TEMPLATE_APPLY:
///   TEST_CASE_TEMPLATE_DEFINE("name", C, id) { using B = typename C::backend; ... }
///   TEST_CASE_TEMPLATE_APPLY(id, test_backends::cross<l2, linf>);
template <class... Backends>
struct backend_list {
  template <class... Policies>
  using cross = decltype(std::tuple_cat(std::declval<policy_on_backends<Policies, Backends...>>()...));
};

using test_backends = backend_list<OPNORM_TEST_BACKENDS>;

}  // namespace opnorm::testing
