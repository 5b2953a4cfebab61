#pragma once

namespace opnorm {

/// train: BatchNorm normalizes with batch statistics and updates its running
/// statistics. eval: BatchNorm uses running statistics; nothing changes.
/// Attacks and power iterations always run in eval.
enum class mode { train, eval };

}  // namespace opnorm
