// libFuzzer target: the IDX readers (load_idx_images<float>, load_idx_labels),
// plain and gzip-compressed.
//
// The first input byte picks how the rest reaches the reader (modulo 3):
//   0  written as is under a plain name: the IDX parser on raw bytes
//   1  written as is under a .gz name: zlib's decoder on mutated compressed
//      bytes (headers, deflate blocks, CRC and length trailers)
//   2  gzip-compressed here and written under a .gz name: the IDX parser
//      behind a valid gzip stream (the chunked reads through zlib)
// Both readers run on every input. Bad input must end in opnorm::data_error;
// an accepted file must hold what its bytes say (checked where the plain
// content is known: modes 0 and 2).
#include <zlib.h>

#include <opnorm/data/idx.hpp>

#include "fuzz_common.hpp"

namespace {

using opnorm_fuzz::fail;

std::vector<unsigned char> gzip(const std::uint8_t* data, std::size_t size) {
  z_stream z{};
  // windowBits 15 + 16: a gzip wrapper, as gzip(1) writes.
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    fail("deflateInit2 failed");
  std::vector<unsigned char> out(deflateBound(&z, static_cast<uLong>(size)) + 32);
  z.next_in = const_cast<Bytef*>(data);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fail("deflate did not finish");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::uint64_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint64_t{p[0]} << 24) | (std::uint64_t{p[1]} << 16) | (std::uint64_t{p[2]} << 8) | p[3];
}

// An accepted images file: the header must have been exactly what the reader
// reports, and every pixel the byte behind it divided by 255.
void check_images(const opnorm::tensor<float, opnorm::backend::cpu>& images, const std::uint8_t* content,
                  std::size_t size) {
  if (size < 16) fail("images accepted from %zu bytes, fewer than an IDX rank-3 header", size);
  const std::uint64_t n = big_endian_u32(content + 4), rows = big_endian_u32(content + 8),
                      cols = big_endian_u32(content + 12);
  if (images.rank() != 4 || images.dim(0) != static_cast<opnorm::index_t>(n) || images.dim(1) != 1 ||
      images.dim(2) != static_cast<opnorm::index_t>(rows) || images.dim(3) != static_cast<opnorm::index_t>(cols))
    fail("images: shape %s does not match the header", opnorm::shape_string(images.shape()).c_str());
  if (size != 16 + n * rows * cols) fail("images accepted from %zu bytes for a %s file", size,
                                         opnorm::shape_string(images.shape()).c_str());
  const float* x = images.data();
  for (std::size_t i = 0; i < n * rows * cols; ++i)
    if (x[i] != static_cast<float>(content[16 + i]) / 255.0f) fail("images: pixel %zu is %g", i, double(x[i]));
}

void check_labels(const opnorm::label_tensor<opnorm::backend::cpu>& labels, const std::uint8_t* content,
                  std::size_t size, int classes) {
  if (size < 8) fail("labels accepted from %zu bytes, fewer than an IDX rank-1 header", size);
  const std::uint64_t n = big_endian_u32(content + 4);
  if (labels.rank() != 1 || labels.dim(0) != static_cast<opnorm::index_t>(n) || size != 8 + n)
    fail("labels: shape %s from %zu bytes", opnorm::shape_string(labels.shape()).c_str(), size);
  for (std::size_t i = 0; i < n; ++i)
    if (labels[static_cast<opnorm::index_t>(i)] != content[8 + i] || content[8 + i] >= classes)
      fail("labels: label %zu is %d, the file says %d", i, int(labels[static_cast<opnorm::index_t>(i)]),
           int(content[8 + i]));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  const std::uint8_t* content = data + 1;
  const std::size_t content_size = size - 1;
  std::filesystem::path path;
  if (mode == 0) {
    path = opnorm_fuzz::write_input("input-idx-ubyte", content, content_size);
  } else if (mode == 1) {
    path = opnorm_fuzz::write_input("input-idx-ubyte.gz", content, content_size);
  } else {
    const std::vector<unsigned char> compressed = gzip(content, content_size);
    path = opnorm_fuzz::write_input("input-idx-ubyte.gz", compressed.data(), compressed.size());
  }
  const bool content_known = mode != 1;

  try {
    const auto images = opnorm::load_idx_images<float>(path);
    if (content_known) check_images(images, content, content_size);
  } catch (const opnorm::data_error&) {
  }
  // 10 classes, as MNIST loads them, so the out-of-range check is reachable.
  constexpr int classes = 10;
  try {
    const auto labels = opnorm::load_idx_labels(path, classes);
    if (content_known) check_labels(labels, content, content_size, classes);
  } catch (const opnorm::data_error&) {
  }
  return 0;
}
