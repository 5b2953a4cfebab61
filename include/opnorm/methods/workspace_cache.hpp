#pragma once
// A training method is a plain value that works with any model type, but its
// power iterations want buffers that survive from one batch to the next.
// workspace_cache keeps one such buffer object per model type, created on
// first use.
#include <any>

namespace opnorm::detail {

class workspace_cache {
 public:
  template <class Workspace>
  Workspace& get() {
    if (auto* w = std::any_cast<Workspace>(&held_)) return *w;
    return held_.emplace<Workspace>();
  }

 private:
  std::any held_;
};

}  // namespace opnorm::detail
