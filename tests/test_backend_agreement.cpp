// Backend agreement: the same computation on the cpu backend and on another
// backend B gives the same numbers, layer by layer and end to end (a whole
// network, the power iteration, the attacks (PGA, APGD-CE, APGD-T), the
// four training methods and a short training run).
//
// The file is written for any backend, including one whose memory the host
// cannot read (thrust<cuda>): it never touches an element of a
// tensor<..., B>. Inputs are built on the host (on cpu), moved to B with
// from_vector(shape, to_vector()), and results come back with to_vector().
// Models are built on both sides from the same seed: initialize draws on the
// host, so the weights are identical bits on every backend.
//
// On the host this runs over the Thrust host systems; a CUDA build compiles
// this same file with -DOPNORM_AGREEMENT_BACKENDS=opnorm::backend::thrust_cuda,
// and a build with OPNORM_BLAS=ON compiles it as test_backend_agreement_blas
// for backend::cpu_blas (the cpu backend with OpenBLAS's GEMMs).
#ifndef OPNORM_AGREEMENT_BACKENDS
#define OPNORM_AGREEMENT_BACKENDS opnorm::backend::thrust_omp, opnorm::backend::thrust_cpp
#endif

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <opnorm/kernel/attacks.hpp>
#include <opnorm/backend/cpu.hpp>
#include <opnorm/backend/thrust.hpp>
#ifdef OPNORM_HAVE_BLAS
#include <opnorm/backend/cpu_blas.hpp>
#endif
#include <opnorm/nn/losses.hpp>
#include <opnorm/methods/adversarial.hpp>
#include <opnorm/methods/data_dependent_snr.hpp>
#include <opnorm/methods/global_snr.hpp>
#include <opnorm/methods/standard.hpp>
#include <opnorm/nn/networks.hpp>
#include <opnorm/kernel/power_iteration.hpp>
#include <opnorm/train/optimizers.hpp>

using namespace opnorm;

namespace {

// Runs the enclosing scope with one OpenMP thread and restores the count.
struct one_openmp_thread {
#ifdef _OPENMP
  int saved = omp_get_max_threads();
  one_openmp_thread() { omp_set_num_threads(1); }
  ~one_openmp_thread() { omp_set_num_threads(saved); }
#endif
};

using cpu = backend::cpu;

// ------------------------------------------------------------------ helpers

/// t copied onto backend B2 through the host, the one route every backend offers.
template <class B2, class T, class B1>
tensor<T, B2> moved(const tensor<T, B1>& t) {
  return tensor<T, B2>::from_vector(t.shape(), t.to_vector());
}

/// U(lo, hi) values drawn on the host, as a cpu tensor.
template <class T>
tensor<T, cpu> host_uniform(const shape_t& shape, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(shape_size(shape)));
  for (auto& e : v) e = static_cast<T>(d(rng));
  return tensor<T, cpu>::from_vector(shape, v);
}

label_tensor<cpu> host_labels(index_t n, int classes, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> d(0, classes - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = d(rng);
  return label_tensor<cpu>::from_vector({n}, v);
}

template <class T>
double max_abs_difference(const std::vector<T>& a, const std::vector<T>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return worst;
}

template <class T, class B1, class B2>
double max_abs_difference(const tensor<T, B1>& a, const tensor<T, B2>& b) {
  REQUIRE(a.shape() == b.shape());
  return max_abs_difference(a.to_vector(), b.to_vector());
}

/// ||a - b|| / max(||a||, ||b||), 0 when both are 0.
template <class T, class B1, class B2>
double relative_difference(const tensor<T, B1>& a, const tensor<T, B2>& b) {
  REQUIRE(a.shape() == b.shape());
  const std::vector<T> va = a.to_vector(), vb = b.to_vector();
  double diff = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < va.size(); ++i) {
    const double x = static_cast<double>(va[i]), y = static_cast<double>(vb[i]);
    diff += (x - y) * (x - y);
    na += x * x;
    nb += y * y;
  }
  const double scale = std::sqrt(std::max(na, nb));
  return scale == 0 ? 0 : std::sqrt(diff) / scale;
}

template <class Layer>
state_list<typename Layer::scalar, typename Layer::backend_type> state_of(Layer& layer) {
  state_list<typename Layer::scalar, typename Layer::backend_type> s;
  layer.collect_state(s, "");
  return s;
}

enum class entries { parameters, gradients, buffers };

/// Checks every parameter value, parameter gradient or buffer of two models
/// (or layers' state lists) against each other, by name, to a maximum
/// absolute difference.
template <class T, class B1, class B2>
void check_state_agrees(const state_list<T, B1>& a, const state_list<T, B2>& b, entries what, double tolerance) {
  const auto& ta = what == entries::buffers ? a.buffers : a.parameters;
  const auto& tb = what == entries::buffers ? b.buffers : b.parameters;
  REQUIRE(ta.size() == tb.size());
  for (std::size_t i = 0; i < ta.size(); ++i) {
    CAPTURE(ta[i].name);
    REQUIRE(ta[i].name == tb[i].name);
    const auto& x = what == entries::gradients ? *ta[i].grad : *ta[i].value;
    const auto& y = what == entries::gradients ? *tb[i].grad : *tb[i].value;
    CHECK(max_abs_difference(x, y) <= tolerance);
  }
}

// ---------------------------------------------------------------- layers

/// Builds Layer<double, cpu> and Layer<double, B> from the same arguments,
/// gives both the same random state (parameters in [-1, 1]; buffers in
/// [0.5, 2], positive because running variances and standard deviations must
/// be), and checks that forward (output and updated buffers), vjp (input and
/// parameter gradients) and jvp agree to 1e-12 relative error in double.
template <template <class, class> class Layer, class B, class... Args>
void check_layer_agrees(const shape_t& input_shape, mode m, std::uint64_t seed, const Args&... args) {
  Layer<double, cpu> ref(args...);
  Layer<double, B> dut(args...);
  std::mt19937_64 rng(seed);
  const auto sr = state_of(ref);
  const auto sd = state_of(dut);
  REQUIRE(sr.parameters.size() == sd.parameters.size());
  REQUIRE(sr.buffers.size() == sd.buffers.size());
  for (std::size_t i = 0; i < sr.parameters.size(); ++i) {
    const auto v = host_uniform<double>(sr.parameters[i].value->shape(), rng, -1.0, 1.0);
    *sr.parameters[i].value = v;
    *sd.parameters[i].value = moved<B>(v);
  }
  for (std::size_t i = 0; i < sr.buffers.size(); ++i) {
    const auto v = host_uniform<double>(sr.buffers[i].value->shape(), rng, 0.5, 2.0);
    *sr.buffers[i].value = v;
    *sd.buffers[i].value = moved<B>(v);
  }
  const double tolerance = 1e-12;

  const tensor<double, cpu> x = host_uniform<double>(input_shape, rng, -1.0, 1.0);
  const tensor<double, B> xd = moved<B>(x);
  typename Layer<double, cpu>::cache cr;
  typename Layer<double, B>::cache cd;
  tensor<double, cpu> yr;
  tensor<double, B> yd;
  ref.forward(x, yr, cr, m);
  dut.forward(xd, yd, cd, m);
  INFO("forward");
  CHECK(relative_difference(yr, yd) < tolerance);
  for (std::size_t i = 0; i < sr.buffers.size(); ++i) {  // batch_norm's train mode updates its statistics
    CAPTURE(sr.buffers[i].name);
    CHECK(relative_difference(*sr.buffers[i].value, *sd.buffers[i].value) < tolerance);
  }

  // vjp with input and parameter gradients (which accumulate: start at zero).
  for (auto& p : sr.parameters) p.grad->set_zero();
  for (auto& p : sd.parameters) p.grad->set_zero();
  const tensor<double, cpu> gy = host_uniform<double>(yr.shape(), rng, -1.0, 1.0);
  tensor<double, cpu> gxr;
  tensor<double, B> gxd;
  ref.vjp(x, yr, cr, gy, &gxr, true);
  dut.vjp(xd, yd, cd, moved<B>(gy), &gxd, true);
  INFO("vjp");
  CHECK(relative_difference(gxr, gxd) < tolerance);
  for (std::size_t i = 0; i < sr.parameters.size(); ++i) {
    CAPTURE(sr.parameters[i].name);
    CHECK(relative_difference(*sr.parameters[i].grad, *sd.parameters[i].grad) < tolerance);
  }

  // jvp, from a fresh forward pass so the cache is the forward's alone.
  ref.forward(x, yr, cr, m);
  dut.forward(xd, yd, cd, m);
  const tensor<double, cpu> dx = host_uniform<double>(x.shape(), rng, -1.0, 1.0);
  tensor<double, cpu> jr;
  tensor<double, B> jd;
  ref.jvp(x, yr, cr, dx, jr);
  dut.jvp(xd, yd, cd, moved<B>(dx), jd);
  INFO("jvp");
  CHECK(relative_difference(jr, jd) < tolerance);
}

}  // namespace

TEST_CASE_TEMPLATE("dense in double: forward, vjp and jvp agree with cpu to 1e-12", B, OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<dense, B>({5, 7}, mode::train, 1, index_t{7}, index_t{4});
}

TEST_CASE_TEMPLATE("conv2d stride 2, padding 1 in double: forward, vjp and jvp agree with cpu to 1e-12", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<conv2d, B>({2, 3, 7, 6}, mode::train, 2, index_t{3}, index_t{4}, index_t{3}, index_t{2},
                                index_t{1});
}

TEST_CASE_TEMPLATE("conv2d 3x3 padding 1 without bias in double: forward, vjp and jvp agree with cpu to 1e-12", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<conv2d, B>({3, 2, 5, 5}, mode::train, 3, index_t{2}, index_t{5}, index_t{3}, index_t{1},
                                index_t{1}, false);
}

// Eight input channels: the automatic choice is Winograd F(2x2, 3x3), whose
// chunks are per host task on cpu and thrust<omp|cpp>, and wide batched
// GEMMs on a device. Odd output width: a partial last tile.
TEST_CASE_TEMPLATE("conv2d 3x3 stride 1 with 8 input channels (Winograd) in double: forward, vjp and jvp agree with "
                   "cpu to 1e-12",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  REQUIRE(conv2d<double, B>(8, 5, 3, 1, 1).uses_winograd());
  check_layer_agrees<conv2d, B>({3, 8, 6, 7}, mode::train, 4, index_t{8}, index_t{5}, index_t{3}, index_t{1},
                                index_t{1});
}

TEST_CASE_TEMPLATE("batch_norm 2d train mode in double: forward, running statistics, vjp and jvp agree with cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<batch_norm, B>({4, 3, 3, 5}, mode::train, 4, index_t{3});
}

TEST_CASE_TEMPLATE("batch_norm 1d train mode in double: forward, running statistics, vjp and jvp agree with cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<batch_norm, B>({6, 5}, mode::train, 5, index_t{5});
}

TEST_CASE_TEMPLATE("batch_norm 2d eval mode in double: forward, vjp and jvp agree with cpu to 1e-12", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<batch_norm, B>({3, 3, 4, 4}, mode::eval, 6, index_t{3});
}

TEST_CASE_TEMPLATE("relu in double: forward, vjp and jvp agree with cpu to 1e-12", B, OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<relu, B>({3, 2, 4, 5}, mode::train, 7);
}

TEST_CASE_TEMPLATE("max_pool2d 2x2 and 3x3 stride 2 in double: forward, vjp and jvp agree with cpu to 1e-12", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  SUBCASE("2x2, odd input size") { check_layer_agrees<max_pool2d, B>({2, 3, 7, 9}, mode::train, 8, index_t{2}); }
  SUBCASE("3x3 stride 2, overlapping windows") {
    check_layer_agrees<max_pool2d, B>({2, 2, 7, 7}, mode::train, 9, index_t{3}, index_t{2});
  }
}

TEST_CASE_TEMPLATE("flatten in double: forward, vjp and jvp agree with cpu to 1e-12", B, OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<flatten, B>({3, 2, 3, 4}, mode::train, 10);
}

TEST_CASE_TEMPLATE("standardize per channel in double: forward, vjp and jvp agree with cpu to 1e-12", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_layer_agrees<standardize, B>({2, 3, 4, 3}, mode::train, 11, std::vector<double>{0.1, 0.2, 0.3},
                                     std::vector<double>{0.5, 1.0, 2.0});
}

// --------------------------------------------------------------- networks

TEST_CASE_TEMPLATE("fmnist_cnn in float: same seed gives identical weights; train-mode logits and parameter "
                   "gradients of softmax cross-entropy agree with cpu to 1e-5",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  auto ref = make_fmnist_cnn<float, cpu>(21);
  auto dut = make_fmnist_cnn<float, B>(21);
  check_state_agrees(ref.state(), dut.state(), entries::parameters, 0.0);  // drawn on the host: the same bits

  std::mt19937_64 rng(22);
  const auto x = host_uniform<float>({4, 1, 28, 28}, rng, 0.0, 1.0);
  const auto y = host_labels(4, 10, rng);
  const auto xd = moved<B>(x);
  const auto yd = moved<B>(y);
  typename fmnist_cnn<float, cpu>::tape tr;
  typename fmnist_cnn<float, B>::tape td;
  const auto& logits_r = ref.forward(x, tr, mode::train);
  const auto& logits_d = dut.forward(xd, td, mode::train);
  CHECK(max_abs_difference(logits_r, logits_d) <= 1e-5);

  tensor<float, cpu> gr;
  tensor<float, B> gd;
  const float loss_r = softmax_cross_entropy::evaluate(logits_r, y, &gr);
  const float loss_d = softmax_cross_entropy::evaluate(logits_d, yd, &gd);
  CHECK(std::abs(loss_r - loss_d) <= 1e-5);
  ref.zero_grad();
  dut.zero_grad();
  ref.vjp(tr, gr, nullptr, true);
  dut.vjp(td, gd, nullptr, true);
  check_state_agrees(ref.state(), dut.state(), entries::gradients, 1e-5);
  check_state_agrees(ref.state(), dut.state(), entries::buffers, 1e-5);  // running statistics
}

TEST_CASE_TEMPLATE("exact-JVP l2 power iteration on fmnist_cnn<double> gives the same sigma as cpu to 1e-10", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  auto ref = make_fmnist_cnn<double, cpu>(31);
  auto dut = make_fmnist_cnn<double, B>(31);
  std::mt19937_64 rng(32);
  {  // Non-trivial BatchNorm running statistics, the same on both sides.
    const auto warmup = host_uniform<double>({8, 1, 28, 28}, rng, 0.0, 1.0);
    typename fmnist_cnn<double, cpu>::tape tr;
    typename fmnist_cnn<double, B>::tape td;
    ref.forward(warmup, tr, mode::train);
    dut.forward(moved<B>(warmup), td, mode::train);
  }
  const auto x = host_uniform<double>({2, 1, 28, 28}, rng, 0.0, 1.0);
  iteration_options<double> o;
  o.iterations = 20;
  o.seed = 3;
  using kernel = power_iteration<jacobian_operator<exact_jvp>, l2, no_step>;
  const auto pr = kernel{}.run(ref, x, nullptr, o);
  const auto pd = kernel{}.run(dut, moved<B>(x), nullptr, o);
  const std::vector<double> sr = pr.sigma.to_vector(), sd = pd.sigma.to_vector();
  REQUIRE(sr.size() == sd.size());
  for (std::size_t i = 0; i < sr.size(); ++i) {
    CAPTURE(i);
    REQUIRE(sr[i] > 0);
    CHECK(std::abs(sr[i] - sd[i]) / sr[i] < 1e-10);
  }
}

namespace {

/// Attacks are compared in double. An attack's iterates pass kinks (ReLU
/// and max-pool switches, the pixel box, the projection, early stops), and
/// at a kink the float rounding of two GEMM implementations turns into a
/// discrete difference: with cpu_blas (OpenBLAS) against cpu (Eigen), l2
/// PGA's adversarial examples once differed by 5e-4 in float, from one such
/// switch. In double the backends round 1e-16 apart, no iterate lands that
/// close to a kink, and the comparison shows what it is meant to: that the
/// backends compute the same attack. (Float agreement of every pass is
/// checked above and by the one-step method checks below.)
using attack_scalar = double;

/// What the attack checks attack: fmnist_cnn<double> from the same seed on
/// both sides, with non-trivial BatchNorm running statistics (the same on
/// both sides), and 8 inputs labelled with the model's own clean
/// predictions. With a small eps an attack then succeeds on some examples
/// and fails on others: the flags carry information.
template <class B>
struct attack_setup {
  fmnist_cnn<attack_scalar, cpu> ref = make_fmnist_cnn<attack_scalar, cpu>(41);
  fmnist_cnn<attack_scalar, B> dut = make_fmnist_cnn<attack_scalar, B>(41);
  tensor<attack_scalar, cpu> x;
  label_tensor<cpu> y;

  attack_setup() {
    std::mt19937_64 rng(42);
    const auto warmup = host_uniform<attack_scalar>({8, 1, 28, 28}, rng, 0.0, 1.0);
    typename fmnist_cnn<attack_scalar, cpu>::tape tr;
    typename fmnist_cnn<attack_scalar, B>::tape td;
    ref.forward(warmup, tr, mode::train);
    dut.forward(moved<B>(warmup), td, mode::train);
    const index_t n = 8;
    x = host_uniform<attack_scalar>({n, 1, 28, 28}, rng, 0.0, 1.0);
    std::vector<std::int32_t> predicted;
    for (index_t c : argmax_rows(ref.predict(x))) predicted.push_back(static_cast<std::int32_t>(c));
    y = label_tensor<cpu>::from_vector({n}, predicted);
  }
};

/// The results of one attack on cpu (rr) and on B (rd): the same success
/// flags, adversarial examples to 1e-10 and, where loss is asked for, the
/// same per-example attack losses (1e-10 relative).
template <class B>
void check_results_agree(const attack_result<attack_scalar, cpu>& rr, const attack_result<attack_scalar, B>& rd, bool loss) {
  CHECK(rr.success == rd.success);
  CHECK(max_abs_difference(rr.adversarial, rd.adversarial) <= 1e-10);
  if (loss) {
    const index_t n = static_cast<index_t>(rr.loss.size());
    REQUIRE(rd.loss.size() == rr.loss.size());
    CHECK(relative_difference(tensor<attack_scalar, cpu>::from_vector({n}, rr.loss),
                              tensor<attack_scalar, cpu>::from_vector({n}, rd.loss)) < 1e-10);
  }
  // Not a property of B: says when a change elsewhere made the flags all
  // equal, so that eps needs retuning for the comparison to mean something.
  WARN_MESSAGE((rr.success_rate() > 0 && rr.success_rate() < 1),
               "the attack succeeds on all or no examples on cpu; retune eps");
}

/// PGA with two restarts, from the same seed on both sides.
template <class Norm, class B>
void check_attack_agrees(attack_scalar eps) {
  attack_setup<B> s;
  attack_options<attack_scalar> o;
  o.eps = eps;
  o.iterations = 5;
  o.restarts = 2;
  o.seed = 43;
  auto attack_r = make_pga<Norm>(s.ref, o);
  auto attack_d = make_pga<Norm>(s.dut, o);
  check_results_agree(attack_r(s.x, s.y), attack_d(moved<B>(s.x), moved<B>(s.y)), false);
}

/// APGD (Loss: softmax_cross_entropy for APGD-CE, targeted_dlr for APGD-T
/// over 3 target classes), 5 iterations, from the same seed on both sides.
template <class Norm, class Loss, class B>
void check_apgd_agrees(attack_scalar eps) {
  attack_setup<B> s;
  apgd_options<attack_scalar> o;
  o.eps = eps;
  o.iterations = 5;
  o.target_classes = 3;
  o.seed = 44;
  auto attack_r = make_apgd<Norm, Loss>(s.ref, o);
  auto attack_d = make_apgd<Norm, Loss>(s.dut, o);
  check_results_agree(attack_r(s.x, s.y), attack_d(moved<B>(s.x), moved<B>(s.y)), true);
}

}  // namespace

TEST_CASE_TEMPLATE("l2 pga with 2 restarts gives the same success flags as cpu and adversarial examples to 1e-10", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_attack_agrees<l2, B>(1.0);  // succeeds on 6 of 8 examples on cpu
}

TEST_CASE_TEMPLATE("linf pga with 2 restarts gives the same success flags as cpu and adversarial examples to 1e-10",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  check_attack_agrees<linf, B>(0.04);  // succeeds on 5 of 8 examples on cpu
}

TEST_CASE_TEMPLATE("l2 apgd-ce gives the same success flags as cpu, adversarial examples to 1e-10 and losses to "
                   "1e-10 relative",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  check_apgd_agrees<l2, softmax_cross_entropy, B>(0.75);  // succeeds on 3 of 8 examples on cpu
}

TEST_CASE_TEMPLATE("linf apgd-ce gives the same success flags as cpu, adversarial examples to 1e-10 and losses to "
                   "1e-10 relative",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  check_apgd_agrees<linf, softmax_cross_entropy, B>(0.05);  // succeeds on 6 of 8 examples on cpu
}

TEST_CASE_TEMPLATE("l2 apgd-t gives the same success flags as cpu, adversarial examples to 1e-10 and losses to "
                   "1e-10 relative",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  check_apgd_agrees<l2, targeted_dlr, B>(0.6);  // succeeds on 4 of 8 examples on cpu
}

TEST_CASE_TEMPLATE("linf apgd-t gives the same success flags as cpu, adversarial examples to 1e-10 and losses to "
                   "1e-10 relative",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  check_apgd_agrees<linf, targeted_dlr, B>(0.03);  // succeeds on 3 of 8 examples on cpu
}

// ---------------------------------------------------------------- methods

namespace {

/// One accumulate_gradients on one batch, on fmnist_cnn<float> made from the
/// same seed on both sides: the same loss (1e-5 relative), the same number
/// of correct predictions, and the same parameter gradients (1e-4 maximum
/// absolute difference). make_method(model) builds the method for a model.
template <class B, class MakeMethod>
void check_method_agrees(MakeMethod make_method) {
  auto ref = make_fmnist_cnn<float, cpu>(51);
  auto dut = make_fmnist_cnn<float, B>(51);
  std::mt19937_64 rng(52);
  const auto x = host_uniform<float>({4, 1, 28, 28}, rng, 0.0, 1.0);
  const auto y = host_labels(4, 10, rng);
  auto method_r = make_method(ref);
  auto method_d = make_method(dut);
  typename fmnist_cnn<float, cpu>::tape tr;
  typename fmnist_cnn<float, B>::tape td;
  ref.zero_grad();
  dut.zero_grad();
  const batch_result rr = method_r.accumulate_gradients(ref, tr, x, y);
  const batch_result rd = method_d.accumulate_gradients(dut, td, moved<B>(x), moved<B>(y));
  CHECK(std::abs(rr.loss - rd.loss) <= 1e-5 * std::abs(rr.loss));
  CHECK(rr.correct == rd.correct);
  check_state_agrees(ref.state(), dut.state(), entries::gradients, 1e-4);
}

}  // namespace

TEST_CASE_TEMPLATE("standard accumulate_gradients in float: same loss and gradients as cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_method_agrees<B>([](auto&) { return standard{}; });
}

TEST_CASE_TEMPLATE("adversarial<l2> accumulate_gradients in float: same loss and gradients as cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_method_agrees<B>([](auto&) {
    adversarial<l2> m;
    m.eps = 1.0;
    m.iterations = 3;
    m.seed = 5;
    return m;
  });
}

TEST_CASE_TEMPLATE("global_snr accumulate_gradients in float: same loss and gradients as cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  // A large lambda and two iterations, so that the penalty's share of the
  // gradient (lambda * sigma * u v^T per weight) is not lost in rounding.
  check_method_agrees<B>([](auto& model) {
    using model_type = std::decay_t<decltype(model)>;
    return global_snr<float, typename model_type::backend_type>(model, 0.1, 2, 7);
  });
}

TEST_CASE_TEMPLATE("data_dependent_snr<l2> accumulate_gradients in float: same loss and gradients as cpu", B,
                   OPNORM_AGREEMENT_BACKENDS) {
  check_method_agrees<B>([](auto&) {
    data_dependent_snr<l2> m;
    m.eps = 1.0;
    m.lambda = 0.1;
    m.iterations = 3;
    m.seed = 9;
    return m;
  });
}

// --------------------------------------------------------------- training

TEST_CASE_TEMPLATE("fmnist_cnn trained 20 sgd-momentum steps (standard, double) ends with the same parameters "
                   "and running statistics as on cpu, to 1e-10",
                   B, OPNORM_AGREEMENT_BACKENDS) {
  // The cpu backend splits conv2d's weight gradient into one partial sum per
  // OpenMP worker and adds them in worker order (conv2d.hpp), so its rounding
  // follows the thread count, while the Thrust backends run those tasks as
  // one worker. Twenty float steps on 16 examples grow that rounding past
  // the bound (5.8e-4 on a running mean with 2 threads, as the TSan pass of
  // scripts/sanitize.sh runs it): both sides run one worker, so that what is
  // compared is the backends, not the thread counts.
  //
  // In double, for the reason the attack checks above give: a training
  // trajectory crosses ReLU and max-pool switches, and there float rounding
  // differences turn discrete. With cpu_blas against cpu the float
  // parameters agreed to 9e-8 for six steps, jumped to 9e-6 at the seventh
  // (one switch) and reached 1.5e-4 by the twentieth. The one-step float
  // checks of the methods above cover float.
  one_openmp_thread single_worker;
  auto ref = make_fmnist_cnn<double, cpu>(61);
  auto dut = make_fmnist_cnn<double, B>(61);
  std::mt19937_64 rng(62);
  const index_t n = 16;
  const auto x = host_uniform<double>({n, 1, 28, 28}, rng, 0.0, 1.0);
  const auto y = host_labels(n, 10, rng);
  const auto xd = moved<B>(x);
  const auto yd = moved<B>(y);
  sgd_options so;
  so.learning_rate = 0.01;
  so.momentum = 0.9;
  sgd<double, cpu> opt_r(ref, so);
  sgd<double, B> opt_d(dut, so);
  standard method;
  typename fmnist_cnn<double, cpu>::tape tr;
  typename fmnist_cnn<double, B>::tape td;
  for (int step = 0; step < 20; ++step) {
    ref.zero_grad();
    dut.zero_grad();
    method.accumulate_gradients(ref, tr, x, y);
    method.accumulate_gradients(dut, td, xd, yd);
    opt_r.step(ref);
    opt_d.step(dut);
  }
  check_state_agrees(ref.state(), dut.state(), entries::parameters, 1e-10);
  check_state_agrees(ref.state(), dut.state(), entries::buffers, 1e-10);
}
