// libFuzzer target: the CIFAR-10 binary reader. The input becomes
// test_batch.bin in a folder of its own, loaded with split::test (the reader
// finds its files by name in a folder; the training split is the same code
// over five files). Bad input must end in opnorm::data_error; an accepted
// file must be a whole number of 3073-byte records whose label bytes and
// pixels are exactly what the loaded data set holds.
#include <opnorm/data/cifar10.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using opnorm_fuzz::fail;
  using format = opnorm::cifar10_format;
  static const std::filesystem::path folder = [] {
    const auto f = opnorm_fuzz::scratch() / "cifar-10-batches-bin";
    std::error_code ec;
    std::filesystem::create_directories(f, ec);
    if (ec) fail("cannot create %s", f.c_str());
    return f;
  }();
  opnorm_fuzz::write_input("cifar-10-batches-bin/test_batch.bin", data, size);

  opnorm::dataset<float> set;
  try {
    set = opnorm::load_cifar10<float>(folder, opnorm::split::test);
  } catch (const opnorm::data_error&) {
    return 0;
  }
  const std::size_t record = static_cast<std::size_t>(format::record);
  if (size == 0 || size % record != 0) fail("accepted a file of %zu bytes", size);
  const std::size_t n = size / record;
  if (set.images.shape() != opnorm::shape_t{static_cast<opnorm::index_t>(n), 3, 32, 32} ||
      set.labels.shape() != opnorm::shape_t{static_cast<opnorm::index_t>(n)} || set.classes != 10)
    fail("images %s, labels %s from %zu records", opnorm::shape_string(set.images.shape()).c_str(),
         opnorm::shape_string(set.labels.shape()).c_str(), n);
  for (std::size_t r = 0; r < n; ++r) {
    const std::uint8_t* rec = data + r * record;
    if (set.labels[static_cast<opnorm::index_t>(r)] != rec[0] || rec[0] >= 10)
      fail("record %zu: label %d, the file says %d", r, int(set.labels[static_cast<opnorm::index_t>(r)]),
           int(rec[0]));
    const float* x = set.images.data() + r * static_cast<std::size_t>(format::pixels);
    for (std::size_t i = 0; i < static_cast<std::size_t>(format::pixels); ++i)
      if (x[i] != static_cast<float>(rec[1 + i]) / 255.0f) fail("record %zu: pixel %zu is %g", r, i, double(x[i]));
  }
  return 0;
}
