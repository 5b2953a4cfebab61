// libFuzzer target: the safetensors reader (header parser and validation) and
// the writer, through a round trip.
//
// read(path) must either throw opnorm::checkpoint_error or return contents
// that the writer accepts. Then:
//   - read_metadata(path) (the header-only reader) agrees with read(path);
//   - write(copy, contents) and read(copy) give back the same tensors (name,
//     dtype, shape, bytes) and metadata;
//   - writing what was read back produces the same bytes again (the writer's
//     layout is a function of the contents alone).
// Anything else aborts.
//
// The first input byte picks the input's form (modulo 2): 0, the rest is the
// file; 1, the rest is the header, a NUL byte and the data (see below).
#include <algorithm>
#include <fstream>
#include <iterator>

#include <opnorm/io/safetensors.hpp>

#include "fuzz_common.hpp"

namespace {

using opnorm_fuzz::fail;
namespace st = opnorm::safetensors;

void expect_equal(const st::contents& a, const st::contents& b) {
  if (a.metadata != b.metadata) fail("the round trip changed the metadata");
  if (a.tensors.size() != b.tensors.size())
    fail("the round trip changed the number of tensors from %zu to %zu", a.tensors.size(), b.tensors.size());
  for (auto i = a.tensors.begin(), j = b.tensors.begin(); i != a.tensors.end(); ++i, ++j) {
    if (i->first != j->first) fail("the round trip renamed '%s' to '%s'", i->first.c_str(), j->first.c_str());
    const st::entry &x = i->second, &y = j->second;
    if (x.type != y.type) fail("tensor '%s': dtype %s became %s", i->first.c_str(), st::dtype_name(x.type),
                               st::dtype_name(y.type));
    if (x.shape != y.shape)
      fail("tensor '%s': shape %s became %s", i->first.c_str(), opnorm::shape_string(x.shape).c_str(),
           opnorm::shape_string(y.shape).c_str());
    if (x.bytes != y.bytes) fail("tensor '%s': the bytes changed", i->first.c_str());
  }
}

std::vector<char> file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read back %s", path.c_str());
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::filesystem::path path;
  if (data[0] % 2 == 0) {
    path = opnorm_fuzz::write_input("input.safetensors", data + 1, size - 1);
  } else {
    // The header and the data, separated by the first NUL byte (which valid
    // JSON cannot contain); the 8-byte length is written here. Mutations
    // that insert or remove header bytes then still give a file whose length
    // prefix fits, instead of one refused at the first check.
    const std::uint8_t* begin = data + 1;
    const std::uint8_t* end = data + size;
    const std::uint8_t* nul = std::find(begin, end, std::uint8_t{0});
    std::vector<unsigned char> file(8);
    st::detail::put_u64_le(static_cast<std::uint64_t>(nul - begin), file.data());
    file.insert(file.end(), begin, nul);
    if (nul != end) file.insert(file.end(), nul + 1, end);
    path = opnorm_fuzz::write_input("input.safetensors", file.data(), file.size());
  }
  st::contents first;
  try {
    first = st::read(path);
  } catch (const opnorm::checkpoint_error&) {
    // The header-only reader gets the same bytes; it may accept them (it
    // does not look at the data section), but it must not fail otherwise.
    try {
      st::read_metadata(path);
    } catch (const opnorm::checkpoint_error&) {
    }
    return 0;
  }
  try {
    if (st::read_metadata(path) != first.metadata) fail("read_metadata disagrees with read");
  } catch (const opnorm::checkpoint_error& e) {
    fail("read accepted the file, read_metadata refused it: %s", e.what());
  }

  const auto copy = opnorm_fuzz::scratch() / "copy.safetensors";
  const auto again = opnorm_fuzz::scratch() / "again.safetensors";
  st::contents second, third;
  try {
    st::write(copy, first.tensors, first.metadata);
    second = st::read(copy);
    st::write(again, second.tensors, second.metadata);
    third = st::read(again);
  } catch (const opnorm::checkpoint_error& e) {
    fail("the round trip of a file read without complaint failed: %s", e.what());
  }
  expect_equal(first, second);
  expect_equal(second, third);
  if (file_bytes(copy) != file_bytes(again)) fail("writing the same contents twice gave different bytes");
  return 0;
}
