#pragma once
// dataset<T>: a labelled image classification set held in host memory.
//
// Images are (N, C, H, W) with pixel values in [0, 1]: the library's
// convention is that data lives in pixel space and standardization is a
// layer inside the model, so attack radii and box clips mean the same thing
// for every data set. Datasets live on the cpu backend; a training loop
// moves one batch at a time to another backend.
#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../nn/losses.hpp"
#include "../core/tensor.hpp"
#include "error.hpp"

namespace opnorm {

namespace detail {
/// pixel byte -> [0, 1], exactly as float(b) / 255 (what torchvision's
/// ToTensor computes), via a table so the conversion is one load per pixel.
template <class T>
std::array<T, 256> byte_to_unit_table() {
  std::array<T, 256> table{};
  for (int b = 0; b < 256; ++b) table[static_cast<std::size_t>(b)] = static_cast<T>(b) / static_cast<T>(255);
  return table;
}

}  // namespace detail

/// Which half of a benchmark data set to load.
enum class split { train, test };

inline const char* split_name(split s) { return s == split::train ? "train" : "test"; }

template <class T = float>
struct dataset {
  static_assert(std::is_floating_point<T>::value, "dataset pixels are floating-point values in [0, 1]");
  using scalar = T;

  tensor<T, backend::cpu> images;      ///< (N, C, H, W), values in [0, 1]
  label_tensor<backend::cpu> labels;   ///< (N), values in [0, classes)
  index_t classes = 0;
  std::vector<std::string> class_names;  ///< empty, or one name per class
  std::string name;                      ///< e.g. "fashion-mnist/test"

  index_t size() const { return images.rank() == 0 ? 0 : images.dim(0); }
  /// (C, H, W): the shape of one example.
  shape_t example_shape() const {
    return images.rank() == 0 ? shape_t{} : shape_t(images.shape().begin() + 1, images.shape().end());
  }
};

/// Throws std::invalid_argument unless `data` is internally consistent:
/// rank-4 images, one label per image, every label in [0, classes), pixels
/// in [0, 1]. Loaders produce consistent datasets; this guards ones that
/// users assemble themselves.
template <class T>
void check_dataset(const dataset<T>& data) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument("opnorm::dataset '" + data.name + "': " + what);
  };
  if (data.images.rank() != 4) fail("images must be (N, C, H, W), got " + shape_string(data.images.shape()));
  if (data.labels.rank() != 1 || data.labels.size() != data.size())
    fail("expects " + std::to_string(data.size()) + " labels, got shape " + shape_string(data.labels.shape()));
  if (data.classes < 1) fail("needs at least one class");
  if (!data.class_names.empty() && static_cast<index_t>(data.class_names.size()) != data.classes)
    fail(std::to_string(data.class_names.size()) + " class names for " + std::to_string(data.classes) + " classes");
  const std::int32_t* y = data.labels.data();
  for (index_t i = 0; i < data.labels.size(); ++i)
    if (y[i] < 0 || y[i] >= data.classes)
      fail("label " + std::to_string(y[i]) + " of example " + std::to_string(i) + " is outside [0, " +
           std::to_string(data.classes) + ")");
  const T* x = data.images.data();
  for (index_t i = 0; i < data.images.size(); ++i)
    if (!(x[i] >= T(0) && x[i] <= T(1)))  // written so that NaN fails too
      fail("pixel " + std::to_string(i) + " is outside [0, 1]");
}

/// Examples [first, first + count) as a new dataset (a copy), e.g. to
/// evaluate on the first thousand test images.
template <class T>
dataset<T> subset(const dataset<T>& data, index_t first, index_t count) {
  if (first < 0 || count < 0 || first + count > data.size())
    throw std::out_of_range("opnorm::subset: examples [" + std::to_string(first) + ", " +
                            std::to_string(first + count) + ") of a dataset of " + std::to_string(data.size()));
  dataset<T> out;
  shape_t shape = data.images.shape();
  shape[0] = count;
  out.images.resize(shape);
  out.labels.resize({count});
  const index_t e = data.images.example_size();
  backend_ops<backend::cpu>::copy(data.images.data() + first * e, count * e, out.images.data());
  backend_ops<backend::cpu>::copy(data.labels.data() + first, count, out.labels.data());
  out.classes = data.classes;
  out.class_names = data.class_names;
  out.name = data.name;
  return out;
}

}  // namespace opnorm
