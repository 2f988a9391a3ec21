// cuBLAS and NVML loaded at run time with dlopen: both are optional on the GPU machine (cuBLAS
// ships in PyTorch's nvidia-cublas wheel there, ~600 MB, never carried), so a missing library
// turns into status=skipped rows, never a build or start-up failure. Prototypes are declared here
// so the build needs no cuBLAS or NVML header.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace moesim::vk {

struct Cublas {
  using Handle = void*;
  // Enum values from cublas_api.h / library_types.h (stable ABI).
  static constexpr int kOpN = 0, kOpT = 1, kR16BF = 14, kR32F = 0, kCompute32F = 68, kGemmDefault = -1;
  int (*create)(Handle*) = nullptr;
  int (*destroy)(Handle) = nullptr;
  int (*set_stream)(Handle, cudaStream_t) = nullptr;
  int (*get_version)(Handle, int*) = nullptr;
  int (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                 const void*, void*, int, int, int, int) = nullptr;
  int (*gemm_strided_batched_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, long long,
                                 const void*, int, int, long long, const void*, void*, int, int, long long, int, int,
                                 int) = nullptr;
  int (*gemm_grouped_batched_ex)(Handle, const int*, const int*, const int*, const int*, const int*, const void*,
                                 const void* const*, int, const int*, const void* const*, int, const int*, const void*,
                                 void* const*, int, const int*, int, const int*, int) = nullptr;
  Handle handle = nullptr;
  std::string path;
  int version = 0;
  bool loaded() const { return handle != nullptr; }
  /// Tries the candidates of search_paths.hpp in order ($VK_CUBLAS_PATH, the loader, ldconfig,
  /// the toolkit's lib64, Python environments' nvidia/cu13/lib ...). false (logged) when absent.
  bool load();
};

struct Nvml {
  using Device = void*;
  int (*init)() = nullptr;
  int (*handle_by_index)(unsigned, Device*) = nullptr;
  int (*clock_info)(Device, int, unsigned*) = nullptr;
  int (*max_clock_info)(Device, int, unsigned*) = nullptr;
  int (*power_usage)(Device, unsigned*) = nullptr;
  int (*temperature)(Device, int, unsigned*) = nullptr;
  int (*driver_version)(char*, unsigned) = nullptr;
  Device device = nullptr;
  /// $VK_NVML_PATH, the loader, ldconfig, the folder libcuda.so.1 came from, driver folders.
  bool load();
  bool loaded() const { return device != nullptr; }
  double sm_clock_mhz() const;
  double max_sm_clock_mhz() const;
  double power_w() const;
  double temp_c() const;
  std::string driver() const;
};

}  // namespace moesim::vk
