// Must not compile: a tag is not a backend until backend_ops<Tag> provides the vocabulary.
#include <opnorm/core/tensor.hpp>
struct my_gpu {};
opnorm::tensor<float, my_gpu> t;
