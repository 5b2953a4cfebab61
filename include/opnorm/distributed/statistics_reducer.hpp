#pragma once
// statistics_reducer: what a BatchNorm layer needs in order to normalize
// with the statistics of the global batch (SyncBatchNorm): a sum of a few
// per-channel numbers over ranks. An abstract class, so that batch_norm's
// type does not depend on the communicator; the call happens a few times
// per layer and step, on arrays of 2 C + 1 doubles, where a virtual call
// costs nothing measurable.
#include "../core/tensor.hpp"

namespace opnorm {
namespace distributed {

class statistics_reducer {
 public:
  virtual ~statistics_reducer() = default;
  /// Replaces values[0 .. count) by their sum over all ranks; every rank calls
  /// it at the same point with the same count.
  virtual void sum(double* values, index_t count) = 0;
};

/// A statistics_reducer over a communicator, which must outlive it.
template <class Communicator>
class communicator_statistics_reducer final : public statistics_reducer {
 public:
  explicit communicator_statistics_reducer(Communicator& communicator) : communicator_(&communicator) {}
  void sum(double* values, index_t count) override { communicator_->all_reduce_sum(values, count); }

 private:
  Communicator* communicator_;
};

}  // namespace distributed
}  // namespace opnorm
