#pragma once
// The data layer: datasets in host memory, their file formats, batching and
// augmentation.
#include "augmentation.hpp"
#include "batching.hpp"
#include "cifar10.hpp"
#include "dataset.hpp"
#include "error.hpp"
#include "idx.hpp"
#include "shuffle.hpp"

