#pragma once
// Training: optimizers, learning-rate schedules, the epoch loop, its
// callbacks, evaluation and resumable checkpoints.
#include "batch_transfer.hpp"
#include "callbacks.hpp"
#include "evaluate.hpp"
#include "optimizers.hpp"
#include "reports.hpp"
#include "schedules.hpp"
#include "trainer.hpp"
#include "training_checkpoint.hpp"
