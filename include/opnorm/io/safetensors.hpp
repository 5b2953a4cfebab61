#pragma once
// The safetensors file format: reading, validating and atomically writing
// named tensors, the way the reference implementation (huggingface/safetensors)
// lays them out, so files move between opnorm and PyTorch unchanged.
//
// A file is
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   a UTF-8 JSON object starting with '{', padded with spaces to a
//             multiple of 8 so every tensor's data is 8-byte aligned:
//               {"__metadata__": {"key": "value", ...},            (optional)
//                "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   the data  every tensor's bytes, little-endian, row-major; offsets are
//             relative to the start of this section, and the tensors tile it
//             exactly (no gaps, no overlaps, nothing after the last one).
//
// The writer produces the bytes the reference writer produces: compact JSON,
// "__metadata__" first, tensors sorted by descending dtype alignment and then
// by name, header padded with spaces. The reader accepts any valid file (any
// key order) and refuses everything else with a checkpoint_error naming the
// file and the problem, before any tensor data is handed out.
//
// Checksums: safetensors itself has none, so a flipped bit in tensor data
// would load silently. write(..., checksums::crc32) stores each tensor's
// CRC-32 (zlib's, the one of gzip and PNG) as the metadata string
//   "opnorm.crc32.<tensor name>": 8 lowercase hex digits
// which every safetensors reader, PyTorch's included, carries along as
// free-form metadata. read() verifies every such checksum and refuses a
// mismatch naming the tensor; files without them (PyTorch's) load as before.
// The checksum keys are the format's business: read() and read_metadata()
// do not hand them out with the caller's metadata.
//
// Everything here works on host copies (entry holds raw bytes), so tensors of
// any backend are saved through tensor::to_vector and restored through
// backend::copy_from_host.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "../core/tensor.hpp"
#include "atomic_file.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "opnorm's safetensors code copies tensor memory as is, and safetensors data is "
              "little-endian: this host is big-endian");
#endif

namespace opnorm {

/// Everything that can go wrong reading, validating, writing or loading a
/// checkpoint: the message names the file and, where there is one, the tensor.
class checkpoint_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace safetensors {

/// The reference implementation's dtypes, in its order (increasing alignment;
/// the writer sorts by this order, descending, so the order is part of the
/// byte layout).
enum class dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

struct dtype_description {
  dtype type;
  const char* name;
  std::size_t size;  // bytes per element
};

inline constexpr dtype_description dtype_table[] = {
    {dtype::BOOL, "BOOL", 1}, {dtype::U8, "U8", 1},   {dtype::I8, "I8", 1},
    {dtype::F8_E5M2, "F8_E5M2", 1}, {dtype::F8_E4M3, "F8_E4M3", 1}, {dtype::I16, "I16", 2},
    {dtype::U16, "U16", 2},   {dtype::F16, "F16", 2}, {dtype::BF16, "BF16", 2},
    {dtype::I32, "I32", 4},   {dtype::U32, "U32", 4}, {dtype::F32, "F32", 4},
    {dtype::F64, "F64", 8},   {dtype::I64, "I64", 8}, {dtype::U64, "U64", 8},
};

inline const dtype_description& describe(dtype t) {
  for (const auto& d : dtype_table)
    if (d.type == t) return d;
  throw std::logic_error("opnorm::safetensors: dtype missing from dtype_table");
}
inline const char* dtype_name(dtype t) { return describe(t).name; }
inline std::size_t dtype_size(dtype t) { return describe(t).size; }

/// The dtype a C++ element type is stored as.
template <class T>
constexpr dtype dtype_of() {
  if constexpr (std::is_same_v<T, float>) return dtype::F32;
  else if constexpr (std::is_same_v<T, double>) return dtype::F64;
  else if constexpr (std::is_same_v<T, bool>) return dtype::BOOL;
  else if constexpr (std::is_same_v<T, std::int8_t>) return dtype::I8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return dtype::U8;
  else if constexpr (std::is_same_v<T, std::int16_t>) return dtype::I16;
  else if constexpr (std::is_same_v<T, std::uint16_t>) return dtype::U16;
  else if constexpr (std::is_same_v<T, std::int32_t>) return dtype::I32;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return dtype::U32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return dtype::I64;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return dtype::U64;
  else static_assert(!sizeof(T), "this element type has no safetensors dtype");
}

/// Whether a stored dtype can be read into elements of type T: floating-point
/// T reads F32 and F64 (converting, so float and double models load each
/// other's files); any other T reads exactly its own dtype.
template <class T>
constexpr bool readable_as(dtype stored) {
  if constexpr (std::is_floating_point_v<T>) return stored == dtype::F32 || stored == dtype::F64;
  else return stored == dtype_of<T>();
}

/// One tensor as it is stored: dtype, shape and raw little-endian bytes.
struct entry {
  dtype type = dtype::F32;
  shape_t shape;
  std::vector<unsigned char> bytes;
};

using tensor_map = std::map<std::string, entry>;
using metadata_map = std::map<std::string, std::string>;

/// What a file holds.
struct contents {
  tensor_map tensors;
  metadata_map metadata;
};

/// The largest header the reference reader accepts (it calls anything larger
/// corrupt); we refuse the same files, and never allocate for a bogus length.
inline constexpr std::uint64_t max_header_size = 100'000'000;

/// Whether write() stores a CRC-32 of every tensor in the metadata.
enum class checksums { none, crc32 };

/// The metadata key prefix of the stored checksums.
inline constexpr const char* crc32_key_prefix = "opnorm.crc32.";

/// zlib's CRC-32 of bytes (fed in chunks, since zlib counts in uInt).
inline std::uint32_t crc32_of(const std::vector<unsigned char>& bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  const unsigned char* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(left, 1u << 30));
    crc = ::crc32(crc, p, chunk);
    p += chunk;
    left -= chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

inline std::string crc32_text(std::uint32_t crc) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(crc));
  return hex;
}

/// The first element of values that is NaN or infinite, described as
/// "holds nan at index 3 of shape [2, 4]"; empty when all are finite.
/// Loaders refuse such tensors: a NaN weight does not always surface in the
/// outputs (a max or an argmax can step over it) and would be trained on.
template <class T>
std::string first_non_finite(const std::vector<T>& values, const shape_t& shape) {
  if constexpr (std::is_floating_point_v<T>) {
    for (std::size_t i = 0; i < values.size(); ++i)
      if (!std::isfinite(values[i]))
        return std::string("holds ") + (std::isnan(values[i]) ? "nan" : values[i] > 0 ? "inf" : "-inf") +
               " at index " + std::to_string(i) + " of shape " + shape_string(shape);
  }
  return {};
}

// ---------------------------------------------------------------------------
// Conversions between tensors and entries.

/// A host copy of t's elements as an entry of t's own dtype.
template <class T, class B>
entry to_entry(const tensor<T, B>& t) {
  entry e;
  e.type = dtype_of<T>();
  e.shape = t.shape();
  const std::vector<T> values = t.to_vector();
  e.bytes.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(e.bytes.data(), values.data(), e.bytes.size());
  return e;
}

/// A 0-dimensional entry (shape []), the way PyTorch stores a Python-number
/// buffer such as BatchNorm's num_batches_tracked (int64).
template <class T>
entry scalar_entry(T value) {
  entry e;
  e.type = dtype_of<T>();
  e.bytes.resize(sizeof(T));
  std::memcpy(e.bytes.data(), &value, sizeof(T));
  return e;
}

/// e's elements converted to T on the host. Throws checkpoint_error when
/// readable_as<T>(e.type) is false or the byte count does not match the shape;
/// `what` names the tensor (and file) in that message.
template <class T>
std::vector<T> decode(const entry& e, const std::string& what) {
  if (!readable_as<T>(e.type))
    throw checkpoint_error(what + " has dtype " + dtype_name(e.type) + ", which cannot be read as " +
                           dtype_name(dtype_of<T>()) +
                           (std::is_floating_point_v<T> ? " (floating-point tensors read F32 or F64)" : ""));
  for (index_t d : e.shape)
    if (d < 0) throw checkpoint_error(what + " has a negative dimension in shape " + shape_string(e.shape));
  const std::size_t n = static_cast<std::size_t>(shape_size(e.shape));
  if (e.bytes.size() != n * dtype_size(e.type))
    throw checkpoint_error(what + " holds " + std::to_string(e.bytes.size()) + " bytes, but shape " +
                           shape_string(e.shape) + " of " + dtype_name(e.type) + " needs " +
                           std::to_string(n * dtype_size(e.type)));
  std::vector<T> out(n);
  if (e.type == dtype_of<T>()) {
    if (n) std::memcpy(out.data(), e.bytes.data(), e.bytes.size());
  } else if (e.type == dtype::F32) {  // only reachable for floating-point T
    for (std::size_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, e.bytes.data() + i * sizeof(float), sizeof(float));
      out[i] = static_cast<T>(v);
    }
  } else {  // F64
    for (std::size_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, e.bytes.data() + i * sizeof(double), sizeof(double));
      out[i] = static_cast<T>(v);
    }
  }
  return out;
}

/// e as a tensor of element type T on backend B (see decode for what converts).
template <class T, class B = backend::cpu>
tensor<T, B> to_tensor(const entry& e, const std::string& what = "tensor") {
  std::vector<T> values = decode<T>(e, what);
  tensor<T, B> t(e.shape);
  backend_ops<B>::copy_from_host(values.data(), t.size(), t.data());
  return t;
}

// ---------------------------------------------------------------------------
// Serialization.

namespace detail {

inline std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

/// Removes the checksum keys from metadata.
inline void strip_checksums(metadata_map& metadata) {
  const std::string prefix = crc32_key_prefix;
  auto it = metadata.lower_bound(prefix);
  while (it != metadata.end() && it->first.compare(0, prefix.size(), prefix) == 0) it = metadata.erase(it);
}

inline std::string file_error(const std::filesystem::path& p, const std::string& problem) {
  return "opnorm::safetensors: " + quoted(p) + ": " + problem;
}

inline void put_u64_le(std::uint64_t v, unsigned char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline std::uint64_t get_u64_le(const unsigned char* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return v;
}

/// Names in the order the reference writer stores them: larger alignment
/// first (so every tensor stays aligned behind the 8-byte-padded header),
/// then by name.
inline std::vector<const tensor_map::value_type*> storage_order(const tensor_map& tensors) {
  std::vector<const tensor_map::value_type*> order;
  for (const auto& kv : tensors) order.push_back(&kv);
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return static_cast<int>(a->second.type) > static_cast<int>(b->second.type);
  });  // stable over a std::map: names stay sorted within one dtype
  return order;
}

/// The 8-byte length and padded JSON header for tensors in storage order.
inline std::string header_bytes(const std::vector<const tensor_map::value_type*>& order,
                                 const metadata_map& metadata, const std::filesystem::path& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::uint64_t offset = 0;
  for (const auto* kv : order) {
    const auto& [name, e] = *kv;
    if (name == "__metadata__")
      throw checkpoint_error(file_error(path, "'__metadata__' is reserved and cannot name a tensor"));
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    std::uint64_t numel = 1;
    for (index_t d : e.shape) {
      if (d < 0)
        throw checkpoint_error(file_error(path, "tensor '" + name + "' has a negative dimension in shape " +
                                                    shape_string(e.shape)));
      shape.push_back(static_cast<std::uint64_t>(d));
      numel *= static_cast<std::uint64_t>(d);
    }
    if (e.bytes.size() != numel * dtype_size(e.type))
      throw checkpoint_error(file_error(path, "tensor '" + name + "' holds " + std::to_string(e.bytes.size()) +
                                                  " bytes, but shape " + shape_string(e.shape) + " of " +
                                                  dtype_name(e.type) + " needs " +
                                                  std::to_string(numel * dtype_size(e.type))));
    nlohmann::ordered_json info = nlohmann::ordered_json::object();
    info["dtype"] = dtype_name(e.type);
    info["shape"] = std::move(shape);
    info["data_offsets"] = {offset, offset + e.bytes.size()};
    header[name] = std::move(info);
    offset += e.bytes.size();
  }
  std::string json;
  try {
    json = header.dump();  // compact, UTF-8 kept as is: what serde_json::to_string writes
  } catch (const nlohmann::json::exception& ex) {  // invalid UTF-8 in a name or metadata
    throw checkpoint_error(file_error(path, std::string("cannot encode the header: ") + ex.what()));
  }
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > max_header_size)
    throw checkpoint_error(file_error(path, "the header would be " + std::to_string(json.size()) +
                                                " bytes, more than readers accept"));
  std::string out(8, '\0');
  put_u64_le(json.size(), reinterpret_cast<unsigned char*>(out.data()));
  return out + json;
}

/// Writes the pieces atomically (io/atomic_file.hpp) as a checkpoint_error
/// on failure, like every other error of this file.
inline void write_atomically(const std::filesystem::path& path, const std::vector<byte_range>& pieces) {
  try {
    write_file_atomically(path, pieces);
  } catch (const file_write_error& e) {
    throw checkpoint_error(std::string("opnorm::safetensors: ") + e.what());
  }
}

/// Reads exactly n bytes at the stream's position or throws naming the file.
inline void read_exactly(std::ifstream& in, void* out, std::uint64_t n, const std::filesystem::path& path,
                         const char* what) {
  if (n == 0) return;
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(n));
  if (!in || static_cast<std::uint64_t>(in.gcount()) != n)
    throw checkpoint_error(file_error(path, std::string("cannot read the ") + what +
                                                " (the file changed while being read, or an I/O error)"));
}

/// A tensor as the header describes it; offsets are relative to the data section.
struct tensor_location {
  std::string name;
  dtype type;
  shape_t shape;
  std::uint64_t begin, end;
};

struct parsed_header {
  metadata_map metadata;
  std::vector<tensor_location> tensors;  // sorted by offset
};

inline bool is_size(const nlohmann::json& j) { return j.is_number_unsigned(); }

/// Parses and validates the header text against a data section of data_size
/// bytes; every problem becomes a checkpoint_error naming the file.
inline parsed_header parse_header(const std::string& text, std::uint64_t data_size,
                                  const std::filesystem::path& path) {
  auto fail = [&](const std::string& problem) { throw checkpoint_error(file_error(path, problem)); };
  // The reference reader insists on '{' first, which also rejects files
  // whose first 8 bytes are not a safetensors length at all.
  if (text.empty() || text[0] != '{') fail("the header does not start with '{'; not a safetensors file");
  std::set<std::string> names;
  std::string duplicate;
  nlohmann::json header;
  try {
    // The callback sees every top-level key; plain parsing would silently keep
    // only the last of two tensors with the same name.
    header = nlohmann::json::parse(text, [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& key) {
      if (depth == 1 && event == nlohmann::json::parse_event_t::key && !names.insert(key.get<std::string>()).second &&
          duplicate.empty())
        duplicate = key.get<std::string>();
      return true;
    });
  } catch (const nlohmann::json::exception& ex) {
    // Not only parse_error: a number too large for a double is out_of_range
    // (found by fuzz_safetensors).
    fail(std::string("the header is not valid JSON: ") + ex.what());
  }
  if (!duplicate.empty()) fail("the header names '" + duplicate + "' twice");
  if (!header.is_object()) fail("the header is not a JSON object");

  parsed_header out;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail("'__metadata__' is not an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) fail("'__metadata__' entry '" + k + "' is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string t = "tensor '" + name + "'";
    if (!value.is_object()) fail(t + " is not described by an object");
    // Other keys are ignored, as the reference reader ignores them.
    if (!value.contains("dtype") || !value["dtype"].is_string()) fail(t + " has no dtype string");
    if (!value.contains("shape") || !value["shape"].is_array()) fail(t + " has no shape array");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array()) fail(t + " has no data_offsets array");

    tensor_location loc;
    loc.name = name;
    const std::string dt = value["dtype"].get<std::string>();
    const dtype_description* known = nullptr;
    for (const auto& d : dtype_table)
      if (dt == d.name) known = &d;
    if (!known) fail(t + " has unknown or unsupported dtype '" + dt + "'");
    loc.type = known->type;

    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : value["shape"]) {
      if (!is_size(d)) fail(t + " has a shape entry that is not a non-negative integer: " + value["shape"].dump());
      const std::uint64_t n = d.get<std::uint64_t>();
      if (n > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) overflow = true;
      if (n != 0 && numel > std::numeric_limits<std::uint64_t>::max() / n) overflow = true;
      else numel *= n;
      loc.shape.push_back(static_cast<index_t>(n));
    }
    const std::uint64_t elem = dtype_size(loc.type);
    if (overflow || numel > std::numeric_limits<std::uint64_t>::max() / elem)
      fail(t + " has a shape whose size overflows: " + value["shape"].dump());

    const auto& offsets = value["data_offsets"];
    if (offsets.size() != 2 || !is_size(offsets[0]) || !is_size(offsets[1]))
      fail(t + " has data_offsets that are not two non-negative integers: " + offsets.dump());
    loc.begin = offsets[0].get<std::uint64_t>();
    loc.end = offsets[1].get<std::uint64_t>();
    if (loc.end < loc.begin) fail(t + " has data_offsets " + offsets.dump() + " that end before they begin");
    if (loc.end - loc.begin != numel * elem)
      fail(t + " has data_offsets " + offsets.dump() + " spanning " + std::to_string(loc.end - loc.begin) +
           " bytes, but shape " + shape_string(loc.shape) + " of " + dt + " needs " + std::to_string(numel * elem));
    out.tensors.push_back(std::move(loc));
  }

  // The tensors must tile the data section: sorted by offset, each begins
  // where the previous one ended, and the last ends at the end of the file.
  std::sort(out.tensors.begin(), out.tensors.end(), [](const tensor_location& a, const tensor_location& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  std::uint64_t expected = 0;
  for (const auto& loc : out.tensors) {
    if (loc.begin != expected)
      fail("tensor '" + loc.name + "' begins at data offset " + std::to_string(loc.begin) + ", but " +
           (loc.begin < expected ? "the previous tensor ends at " : "nothing covers the bytes from ") +
           std::to_string(expected) + " (offsets must tile the data without overlaps or gaps)");
    expected = loc.end;
  }
  if (expected != data_size)
    fail("the tensors cover " + std::to_string(expected) + " bytes of data, but the file holds " +
         std::to_string(data_size) + " bytes after the header");
  return out;
}

/// Opens path and validates its length prefix and header; leaves the stream
/// at the start of the data section.
/// Checks every stored CRC-32 against the tensors' bytes, then removes the
/// checksum keys from the metadata. Either every tensor has a checksum or
/// none has (a file with some is damaged or was edited by hand).
inline void verify_checksums(const std::filesystem::path& path, const tensor_map& tensors, metadata_map& metadata) {
  const std::string prefix = crc32_key_prefix;
  std::size_t found = 0;
  for (auto it = metadata.lower_bound(prefix); it != metadata.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it, ++found) {
    const std::string name = it->first.substr(prefix.size());
    const auto t = tensors.find(name);
    if (t == tensors.end())
      throw checkpoint_error(file_error(path, "the metadata holds a CRC-32 for tensor '" + name +
                                                  "', which the file does not contain; the file is corrupt"));
    const std::string computed = crc32_text(crc32_of(t->second.bytes));
    if (it->second != computed)
      throw checkpoint_error(file_error(path, "tensor '" + name + "' fails its CRC-32 check (stored " + it->second +
                                                  ", computed " + computed +
                                                  "): its data is corrupt; the file was not loaded"));
  }
  if (found != 0 && found != tensors.size())
    for (const auto& [name, e] : tensors)
      if (!metadata.count(prefix + name))
        throw checkpoint_error(file_error(path, "tensor '" + name +
                                                    "' has no CRC-32 while the file's other tensors have one; the "
                                                    "header is corrupt"));
  strip_checksums(metadata);
}

inline parsed_header open_and_parse(const std::filesystem::path& path, std::ifstream& in) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw checkpoint_error(file_error(path, "is a directory, not a safetensors file"));
  in.open(path, std::ios::binary);
  if (!in) throw checkpoint_error(file_error(path, std::string("cannot open: ") + std::strerror(errno)));
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(0, std::ios::beg);
  if (!in || end < 0) throw checkpoint_error(file_error(path, "cannot determine the file size"));
  const std::uint64_t file_size = static_cast<std::uint64_t>(end);
  if (file_size < 8)
    throw checkpoint_error(file_error(path, "the file is " + std::to_string(file_size) +
                                                " bytes long, too short for the 8-byte header length"));
  unsigned char prefix[8];
  read_exactly(in, prefix, 8, path, "header length");
  const std::uint64_t n = get_u64_le(prefix);
  if (n > max_header_size)
    throw checkpoint_error(file_error(path, "the header length " + std::to_string(n) + " exceeds the limit of " +
                                                std::to_string(max_header_size) + " bytes; the file is corrupt"));
  if (n > file_size - 8)
    throw checkpoint_error(file_error(path, "the header length " + std::to_string(n) + " exceeds the " +
                                                std::to_string(file_size - 8) +
                                                " bytes that follow it; the file is truncated or corrupt"));
  std::string text(static_cast<std::size_t>(n), '\0');
  read_exactly(in, text.data(), n, path, "header");
  return parse_header(text, file_size - 8 - n, path);
}

}  // namespace detail

/// Writes tensors and metadata to path atomically (see write_atomically): an
/// existing file at path is replaced only once the new one is complete.
/// With checksums::crc32 each tensor's CRC-32 goes into the metadata (see
/// the top of this file); without, the bytes are exactly the reference
/// writer's for the same tensors and metadata.
inline void write(const std::filesystem::path& path, const tensor_map& tensors, const metadata_map& metadata = {},
                  checksums sums = checksums::none) {
  metadata_map header_metadata = metadata;
  for (const auto& [key, value] : metadata)
    if (key.compare(0, std::string(crc32_key_prefix).size(), crc32_key_prefix) == 0)
      throw checkpoint_error(detail::file_error(path, "metadata key '" + key + "' is reserved for checksums"));
  if (sums == checksums::crc32)
    for (const auto& [name, e] : tensors) header_metadata[crc32_key_prefix + name] = crc32_text(crc32_of(e.bytes));
  const auto order = detail::storage_order(tensors);
  const std::string header = detail::header_bytes(order, header_metadata, path);
  std::vector<byte_range> pieces{{header.data(), header.size()}};
  for (const auto* kv : order) pieces.push_back({kv->second.bytes.data(), kv->second.bytes.size()});
  detail::write_atomically(path, pieces);
}

/// Reads and validates a whole file. Nothing is returned unless every check
/// passed, so callers can copy from the result without further checks of the
/// file's structure.
inline contents read(const std::filesystem::path& path) {
  std::ifstream in;
  detail::parsed_header header = detail::open_and_parse(path, in);
  contents out;
  out.metadata = std::move(header.metadata);
  for (auto& loc : header.tensors) {  // in offset order, so the reads are sequential
    entry e;
    e.type = loc.type;
    e.shape = std::move(loc.shape);
    e.bytes.resize(static_cast<std::size_t>(loc.end - loc.begin));
    detail::read_exactly(in, e.bytes.data(), e.bytes.size(), path, ("data of tensor '" + loc.name + "'").c_str());
    out.tensors.emplace(std::move(loc.name), std::move(e));
  }
  detail::verify_checksums(path, out.tensors, out.metadata);
  return out;
}

/// The "__metadata__" strings of a file, reading only (and fully validating)
/// its header: cheap, for deciding how to resume before loading anything.
inline metadata_map read_metadata(const std::filesystem::path& path) {
  std::ifstream in;
  metadata_map metadata = detail::open_and_parse(path, in).metadata;
  detail::strip_checksums(metadata);  // verified by read(), which sees the data
  return metadata;
}

/// Saves named tensors of one element type (e.g. optimizer state such as
/// "optimizer.1.weight.momentum") with optional metadata, atomically.
template <class T, class B>
void save_tensors(const std::filesystem::path& path, const std::map<std::string, tensor<T, B>>& tensors,
                  const metadata_map& metadata = {}) {
  tensor_map entries;
  for (const auto& [name, t] : tensors) entries.emplace(name, to_entry(t));
  write(path, entries, metadata, checksums::crc32);
}

/// Loads every tensor of a file as element type T on backend B (floating T
/// accepts F32 and F64; see readable_as). Fills *metadata when given.
template <class T, class B = backend::cpu>
std::map<std::string, tensor<T, B>> load_tensors(const std::filesystem::path& path,
                                                  metadata_map* metadata = nullptr) {
  contents file = read(path);
  std::map<std::string, tensor<T, B>> out;
  for (const auto& [name, e] : file.tensors)
    out.emplace(name, to_tensor<T, B>(e, detail::file_error(path, "tensor '" + name + "'")));
  if (metadata) *metadata = std::move(file.metadata);
  return out;
}

}  // namespace safetensors
}  // namespace opnorm
