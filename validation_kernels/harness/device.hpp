// The GPU side of vk_harness: one device, one stream, and every wait and copy behind the watchdog.
// Host code against the CUDA runtime (compiled by the host compiler, no kernels here).
//
// Ordering rules (the first GPU run depends on them):
//   * one *blocking* stream (cudaStreamCreate), and every copy is cudaMemcpyAsync on that stream
//     followed by a watchdog wait: a synchronous cudaMemcpy runs on the legacy default stream,
//     which a non-blocking stream does not wait for (clock readings and row offsets raced their
//     kernels), and it would block forever behind a hung kernel;
//   * nothing waits with cudaStreamSynchronize / cudaEventSynchronize / cudaDeviceSynchronize:
//     drain() polls cudaStreamQuery under the watchdog, whose hang handler ends the process;
//   * an error reported by the stream (a kernel fault: the context is lost) is fatal too.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "validation_kernels/harness/watchdog.hpp"

namespace moesim::vk {

/// A CUDA call failed synchronously (bad launch arguments, allocation failure): the context is
/// still usable; the runner records an `error` row and goes on.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void cuda_check(cudaError_t err, const char* what);
#define VK_CUDA(x) ::moesim::vk::cuda_check((x), #x)

class Device {
 public:
  /// on_fatal(reason) is called on a watchdog timeout or an asynchronous device error and must
  /// not return (the runner finishes its files and exits).
  Device(double watchdog_s, std::function<void(const std::string&)> on_fatal);
  ~Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  void init(int ordinal = 0);
  cudaStream_t stream() const { return stream_; }
  const cudaDeviceProp& prop() const { return prop_; }
  int sms() const { return prop_.multiProcessorCount; }
  Watchdog& watchdog() { return watchdog_; }

  /// Waits until all work enqueued on the stream has finished (watchdog; fatal on error).
  void drain(const std::string& what);
  /// Device-to-host copy of n elements, ordered after everything enqueued before it.
  template <typename T>
  std::vector<T> to_host(const T* d, size_t n, const char* what = "to_host") {
    std::vector<T> h(n);
    copy_to_host(h.data(), d, n * sizeof(T), what);
    return h;
  }
  template <typename T>
  void to_device(T* d, const std::vector<T>& h, const char* what = "to_device") {
    copy_to_device(d, h.data(), h.size() * sizeof(T), what);
  }
  void copy_to_host(void* h, const void* d, size_t bytes, const char* what);
  void copy_to_device(void* d, const void* h, size_t bytes, const char* what);
  /// Strided gather of rows to the host: `rows` rows of `row_bytes` bytes at d + r * pitch.
  void rows_to_host(void* h, const void* d, const std::vector<int64_t>& rows, size_t row_bytes, size_t pitch,
                    const char* what);
  /// `height` rows of `width` bytes, `pitch` bytes apart on the device, packed on the host.
  void copy2d_to_host(void* h, const void* d, size_t width, size_t pitch, size_t height, const char* what);

  /// cudaMalloc (at least one element); throws CudaError.
  template <typename T>
  T* alloc(size_t n) {
    return static_cast<T*>(alloc_bytes(std::max<size_t>(n, 1) * sizeof(T)));
  }
  void* alloc_bytes(size_t bytes);
  /// Drains first (cudaFree synchronises the device implicitly and would block behind a hung kernel).
  void free(void* p);

 private:
  double watchdog_s_;
  Watchdog watchdog_;
  std::function<void(const std::string&)> on_fatal_;
  cudaStream_t stream_ = nullptr;
  cudaDeviceProp prop_{};
};

/// Frees a set of device allocations at scope exit (after a drain).
class DeviceScope {
 public:
  explicit DeviceScope(Device& d) : d_(d) {}
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  template <typename T>
  T* alloc(size_t n) {
    T* p = d_.alloc<T>(n);
    ptrs_.push_back(p);
    return p;
  }

 private:
  Device& d_;
  std::vector<void*> ptrs_;
};

}  // namespace moesim::vk
