#pragma once
// nccl_communicator: the communicator interface (communicator.hpp) over
// NCCL, for models on backend::thrust<system::cuda>. Include it where nccl.h
// and the CUDA runtime are available: the CUDA build (OPNORM_CUDA=ON) finds
// the toolkit's NCCL and links it into the programs that use it.
//
//   // one process per GPU, started by mpirun or srun; MPI only passes the id on
//   ncclUniqueId id;
//   if (world.rank() == 0) id = opnorm::distributed::nccl_communicator::unique_id();
//   world.broadcast(&id, sizeof id, 0);
//   cudaSetDevice(local_rank);
//   opnorm::distributed::nccl_communicator gpus(id, world.rank(), world.size());
//   fit(gpus, model, method, optimizer, ...);
//
//   auto one = opnorm::distributed::nccl_communicator::single_device(0);  // one process, one GPU
//
// Two kinds of collectives:
//  * on device memory (all_reduce_sum_on_device, broadcast_on_device): what
//    the gradient averager uses for thrust<cuda> tensors, so gradients are
//    reduced where they are, as NCCL intends;
//  * on host memory (the interface every communicator offers): staged
//    through a device buffer, for the few scalars and per-channel sums the
//    trainer and SyncBatchNorm exchange.
// Every call synchronizes its stream before returning, so the results are
// ready for the backend's kernels, which run on CUDA's default stream.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "communicator.hpp"

namespace opnorm {
namespace distributed {

namespace detail {
inline void check_nccl(ncclResult_t result, const char* call) {
  if (result != ncclSuccess)
    throw std::runtime_error(std::string("opnorm::nccl: ") + call + " failed: " + ncclGetErrorString(result));
}
inline void check_cuda_call(cudaError_t result, const char* call) {
  if (result != cudaSuccess)
    throw std::runtime_error(std::string("opnorm::nccl: ") + call + " failed: " + cudaGetErrorString(result));
}
template <class V>
ncclDataType_t nccl_type();
template <>
inline ncclDataType_t nccl_type<float>() { return ncclFloat32; }
template <>
inline ncclDataType_t nccl_type<double>() { return ncclFloat64; }
template <>
inline ncclDataType_t nccl_type<std::int64_t>() { return ncclInt64; }
template <>
inline ncclDataType_t nccl_type<unsigned char>() { return ncclUint8; }
}  // namespace detail

class nccl_communicator {
 public:
  /// A new job's identity, made by one rank and passed to the others.
  static ncclUniqueId unique_id() {
    ncclUniqueId id;
    detail::check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    return id;
  }

  /// Joins job id as rank of size, on the current CUDA device.
  nccl_communicator(const ncclUniqueId& id, int rank, int size) : rank_(rank), size_(size) {
    if (size < 1 || rank < 0 || rank >= size)
      throw std::invalid_argument("opnorm::nccl_communicator: rank " + std::to_string(rank) + " outside a job of " +
                                  std::to_string(size));
    detail::check_nccl(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
    create_stream();
  }

  /// One process on one GPU: every collective is the identity, computed by
  /// NCCL all the same (the one-rank test runs the whole path).
  static nccl_communicator single_device(int device = 0) {
    detail::check_cuda_call(cudaSetDevice(device), "cudaSetDevice");
    ncclComm_t comm = nullptr;
    int devices[1] = {device};
    detail::check_nccl(ncclCommInitAll(&comm, 1, devices), "ncclCommInitAll");
    return nccl_communicator(comm);
  }

  nccl_communicator(const nccl_communicator&) = delete;
  nccl_communicator& operator=(const nccl_communicator&) = delete;
  nccl_communicator(nccl_communicator&& other) noexcept { swap(other); }
  nccl_communicator& operator=(nccl_communicator&& other) noexcept {
    swap(other);
    return *this;
  }
  ~nccl_communicator() {
    if (staging_) cudaFree(staging_);
    if (stream_) cudaStreamDestroy(stream_);
    if (comm_) ncclCommDestroy(comm_);
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  /// Sums values[0 .. count) in device memory over ranks, in place.
  template <class V>
  void all_reduce_sum_on_device(V* values, index_t count) {
    if (count <= 0) return;
    detail::check_nccl(ncclAllReduce(values, values, static_cast<std::size_t>(count), detail::nccl_type<V>(), ncclSum,
                                     comm_, stream_),
                       "ncclAllReduce");
    synchronize();
  }
  /// Copies root's bytes in device memory to every rank.
  void broadcast_on_device(void* bytes, std::size_t count, int root) {
    if (count == 0) return;
    detail::check_nccl(ncclBroadcast(bytes, bytes, count, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    synchronize();
  }

  void all_reduce_sum(double* values, index_t count) { staged_all_reduce(values, count); }
  void all_reduce_sum(float* values, index_t count) { staged_all_reduce(values, count); }
  void all_reduce_sum(std::int64_t* values, index_t count) { staged_all_reduce(values, count); }
  void broadcast(void* bytes, std::size_t count, int root) {
    if (count == 0) return;
    void* device = staging(count);
    copy(device, bytes, count, cudaMemcpyHostToDevice);
    broadcast_on_device(device, count, root);
    copy(bytes, device, count, cudaMemcpyDeviceToHost);
  }
  void barrier() {
    std::int64_t one = 1;
    all_reduce_sum(&one, 1);
  }

  ncclComm_t native() const { return comm_; }

 private:
  explicit nccl_communicator(ncclComm_t comm) : comm_(comm), rank_(0), size_(1) { create_stream(); }

  void create_stream() { detail::check_cuda_call(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  void synchronize() { detail::check_cuda_call(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  void copy(void* to, const void* from, std::size_t bytes, cudaMemcpyKind kind) {
    detail::check_cuda_call(cudaMemcpyAsync(to, from, bytes, kind, stream_), "cudaMemcpyAsync");
    synchronize();
  }
  // A device buffer of at least bytes, kept for the next call.
  void* staging(std::size_t bytes) {
    if (bytes > staging_bytes_) {
      if (staging_) detail::check_cuda_call(cudaFree(staging_), "cudaFree");
      staging_ = nullptr;
      detail::check_cuda_call(cudaMalloc(&staging_, bytes), "cudaMalloc");
      staging_bytes_ = bytes;
    }
    return staging_;
  }
  template <class V>
  void staged_all_reduce(V* values, index_t count) {
    if (count <= 0) return;
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(V);
    V* device = static_cast<V*>(staging(bytes));
    copy(device, values, bytes, cudaMemcpyHostToDevice);
    all_reduce_sum_on_device(device, count);
    copy(values, device, bytes, cudaMemcpyDeviceToHost);
  }
  void swap(nccl_communicator& other) noexcept {
    std::swap(comm_, other.comm_);
    std::swap(stream_, other.stream_);
    std::swap(staging_, other.staging_);
    std::swap(staging_bytes_, other.staging_bytes_);
    std::swap(rank_, other.rank_);
    std::swap(size_, other.size_);
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* staging_ = nullptr;
  std::size_t staging_bytes_ = 0;
  int rank_ = 0, size_ = 1;
};

static_assert(is_communicator_v<nccl_communicator>, "nccl_communicator is a communicator");

}  // namespace distributed
}  // namespace opnorm
