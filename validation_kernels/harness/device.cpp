#include "validation_kernels/harness/device.hpp"

#include <algorithm>
#include <cstring>

namespace moesim::vk {

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw CudaError(std::string(what) + ": " + cudaGetErrorString(err));
}

Device::Device(double watchdog_s, std::function<void(const std::string&)> on_fatal)
    : watchdog_s_(watchdog_s), watchdog_(watchdog_s), on_fatal_(std::move(on_fatal)) {
  watchdog_.set_hang_handler([this](const std::string& what, double waited) {
    on_fatal_("watchdog: '" + what + "' did not complete within " + std::to_string(static_cast<int>(waited)) +
              " s (hung kernel?)");
  });
}

void Device::init(int ordinal) {
  VK_CUDA(cudaSetDevice(ordinal));
  VK_CUDA(cudaGetDeviceProperties(&prop_, ordinal));
  VK_CUDA(cudaStreamCreate(&stream_));  // blocking: ordered with the legacy default stream too
}

void Device::drain(const std::string& what) {
  cudaError_t seen = cudaSuccess;
  const Watchdog::Result r = watchdog_.wait(
      [this, &seen] {
        const cudaError_t e = cudaStreamQuery(stream_);
        if (e == cudaSuccess) return Watchdog::Poll::kDone;
        if (e == cudaErrorNotReady) return Watchdog::Poll::kPending;
        seen = e;
        return Watchdog::Poll::kError;
      },
      what);
  if (r == Watchdog::Result::kDone) return;
  on_fatal_(r == Watchdog::Result::kError ? "device error while waiting for '" + what + "': " + cudaGetErrorString(seen)
                                          : "watchdog: '" + what + "' did not complete");
  throw CudaError("unreachable: fatal handler returned");  // on_fatal_ does not return
}

void Device::copy_to_host(void* h, const void* d, size_t bytes, const char* what) {
  if (!bytes) return;
  drain(what);  // the copy must not block behind a hung kernel: the stream is idle first
  VK_CUDA(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, stream_));
  drain(what);
}

void Device::copy_to_device(void* d, const void* h, size_t bytes, const char* what) {
  if (!bytes) return;
  drain(what);
  VK_CUDA(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_));
  drain(what);  // pageable source: wait so the host buffer may go away and kernels see the data
}

void Device::rows_to_host(void* h, const void* d, const std::vector<int64_t>& rows, size_t row_bytes, size_t pitch,
                          const char* what) {
  if (rows.empty()) return;
  drain(what);
  auto* out = static_cast<unsigned char*>(h);
  const auto* src = static_cast<const unsigned char*>(d);
  for (size_t i = 0; i < rows.size(); ++i)
    VK_CUDA(cudaMemcpyAsync(out + i * row_bytes, src + static_cast<size_t>(rows[i]) * pitch, row_bytes,
                            cudaMemcpyDeviceToHost, stream_));
  drain(what);
}

void Device::copy2d_to_host(void* h, const void* d, size_t width, size_t pitch, size_t height, const char* what) {
  if (!width || !height) return;
  drain(what);
  VK_CUDA(cudaMemcpy2DAsync(h, width, d, pitch, width, height, cudaMemcpyDeviceToHost, stream_));
  drain(what);
}

void* Device::alloc_bytes(size_t bytes) {
  void* p = nullptr;
  VK_CUDA(cudaMalloc(&p, bytes));
  return p;
}

void Device::free(void* p) {
  if (!p) return;
  drain("free");
  cudaFree(p);
}

DeviceScope::~DeviceScope() {
  for (void* p : ptrs_) d_.free(p);
}

}  // namespace moesim::vk
