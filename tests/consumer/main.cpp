// A user program built against the installed headers (tests/find_package.cmake).
#include <opnorm/opnorm.hpp>
#include <cstdio>
int main() {
  auto model = opnorm::make_fmnist_cnn<float>(1);
  opnorm::tensor<float> x({2, 1, 28, 28}, 0.5f);
  auto y = model.predict(x);
  std::printf("%lld logits\n", static_cast<long long>(y.size()));
}
