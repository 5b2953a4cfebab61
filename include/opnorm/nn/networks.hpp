#pragma once
// The two reference networks, as ready-made types and factories.
//
// The position of a layer in the type list is its index in the equivalent
// torch.nn.Sequential, so state names match PyTorch's: standardize is
// module 0 (buffers "0.mean", "0.std"), the first convolution is "1.weight".
// Inputs are images in [0, 1]; standardization happens inside the model.
// Convolutions keep PyTorch's default bias even where BatchNorm follows,
// so that a model trained by either side loads into the other unchanged.
#include <cstdint>

#include "layers/batch_norm.hpp"
#include "layers/conv2d.hpp"
#include "layers/dense.hpp"
#include "layers/flatten.hpp"
#include "layers/max_pool2d.hpp"
#include "layers/relu.hpp"
#include "layers/standardize.hpp"
#include "sequential.hpp"

namespace opnorm {

/// Pixel statistics of the Fashion-MNIST training set, in [0, 1] units.
inline constexpr double fashion_mnist_mean = 0.2860;
inline constexpr double fashion_mnist_std = 0.3530;

/// Per-channel (R, G, B) pixel statistics of the CIFAR-10 training set.
inline constexpr double cifar10_mean[3] = {0.4914, 0.4822, 0.4465};
inline constexpr double cifar10_std[3] = {0.2470, 0.2435, 0.2616};

/// The Fashion-MNIST network every benchmark uses. Input (N, 1, 28, 28):
///   0 standardize, 1 conv3x3(1->32, pad 1), 2 BN, 3 ReLU,
///   4 conv3x3(32->32, pad 1), 5 BN, 6 ReLU, 7 maxpool2        -> 32 x 14 x 14
///   8 conv3x3(32->64, pad 1), 9 BN, 10 ReLU,
///   11 conv3x3(64->64, pad 1), 12 BN, 13 ReLU, 14 maxpool2    -> 64 x 7 x 7
///   15 flatten (3136), 16 dense(256), 17 ReLU, 18 dense(10).
template <class T = float, class B = backend::cpu>
using fmnist_cnn =
    sequential<standardize<T, B>,                                          //
               conv2d<T, B>, batch_norm<T, B>, relu<T, B>,                 //
               conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
               conv2d<T, B>, batch_norm<T, B>, relu<T, B>,                 //
               conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
               flatten<T, B>, dense<T, B>, relu<T, B>, dense<T, B>>;

/// An fmnist_cnn with PyTorch's default initialization drawn from seed.
template <class T = float, class B = backend::cpu>
fmnist_cnn<T, B> make_fmnist_cnn(std::uint64_t seed = 0) {
  auto conv3x3 = [](index_t in, index_t out) { return conv2d<T, B>(in, out, 3, 1, 1); };
  fmnist_cnn<T, B> net(standardize<T, B>({T(fashion_mnist_mean)}, {T(fashion_mnist_std)}),  //
                       conv3x3(1, 32), batch_norm<T, B>(32), relu<T, B>{},                 //
                       conv3x3(32, 32), batch_norm<T, B>(32), relu<T, B>{}, max_pool2d<T, B>(2),
                       conv3x3(32, 64), batch_norm<T, B>(64), relu<T, B>{},  //
                       conv3x3(64, 64), batch_norm<T, B>(64), relu<T, B>{}, max_pool2d<T, B>(2),
                       flatten<T, B>{}, dense<T, B>(64 * 7 * 7, 256), relu<T, B>{},
                       dense<T, B>(256, 10));
  net.initialize(seed);
  return net;
}

/// The paper's CIFAR-10 network. Input (N, 3, 32, 32); every convolution is
/// 3x3 and followed by BatchNorm without affine parameters and ReLU:
///   0 standardize,
///   1-3 conv(3->128, pad 1),    4-6 conv(128->128, pad 1),  7 maxpool2   -> 128 x 16 x 16
///   8-10 conv(128->256, pad 1), 11-13 conv(256->256, pad 1), 14 maxpool2 -> 256 x 8 x 8
///   15-17 conv(256->512, pad 1), 18-20 conv(512->512, pad 1), 21 maxpool2 -> 512 x 4 x 4
///   22-24 conv(512->1024, pad 0), 25 maxpool2                            -> 1024 x 1 x 1
///   26 flatten, 27 dense(1024 -> 10).
template <class T = float, class B = backend::cpu>
using cnn7 = sequential<standardize<T, B>,                                             //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>,                    //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>,                    //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>,                    //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
                        conv2d<T, B>, batch_norm<T, B>, relu<T, B>, max_pool2d<T, B>,  //
                        flatten<T, B>, dense<T, B>>;

/// A cnn7 with PyTorch's default initialization drawn from seed.
template <class T = float, class B = backend::cpu>
cnn7<T, B> make_cnn7(std::uint64_t seed = 0) {
  auto conv3x3 = [](index_t in, index_t out, index_t padding) {
    return conv2d<T, B>(in, out, 3, 1, padding);
  };
  auto norm = [](index_t features) { return batch_norm<T, B>(features, /*affine=*/false); };
  cnn7<T, B> net(standardize<T, B>({T(cifar10_mean[0]), T(cifar10_mean[1]), T(cifar10_mean[2])},
                                   {T(cifar10_std[0]), T(cifar10_std[1]), T(cifar10_std[2])}),
                 conv3x3(3, 128, 1), norm(128), relu<T, B>{},  //
                 conv3x3(128, 128, 1), norm(128), relu<T, B>{}, max_pool2d<T, B>(2),
                 conv3x3(128, 256, 1), norm(256), relu<T, B>{},  //
                 conv3x3(256, 256, 1), norm(256), relu<T, B>{}, max_pool2d<T, B>(2),
                 conv3x3(256, 512, 1), norm(512), relu<T, B>{},  //
                 conv3x3(512, 512, 1), norm(512), relu<T, B>{}, max_pool2d<T, B>(2),
                 conv3x3(512, 1024, 0), norm(1024), relu<T, B>{}, max_pool2d<T, B>(2),
                 flatten<T, B>{}, dense<T, B>(1024, 10));
  net.initialize(seed);
  return net;
}

}  // namespace opnorm
