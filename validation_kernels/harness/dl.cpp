#include "validation_kernels/harness/dl.hpp"

#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace moesim::vk {
namespace {

template <typename F>
bool sym(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

}  // namespace

bool Cublas::load() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("VK_CUBLAS_PATH")) candidates.emplace_back(env);
  for (const char* n : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) candidates.emplace_back(n);
  for (const char* py : {"python3.12", "python3.11", "python3.10", "python3.13"})
    for (const char* prefix : {"/usr/local/lib/", "/usr/lib/", "/opt/conda/lib/"})
      for (const char* sub :
           {"/site-packages/nvidia/cublas/lib/libcublas.so.13", "/dist-packages/nvidia/cublas/lib/libcublas.so.13",
            "/site-packages/nvidia/cu13/lib/libcublas.so.13"})
        candidates.push_back(std::string(prefix) + py + sub);
  void* lib = nullptr;
  for (const std::string& c : candidates) {
    lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) {
      path = c;
      break;
    }
  }
  if (!lib) {
    std::fprintf(stderr, "[vk] cuBLAS not found (set VK_CUBLAS_PATH); cuBLAS baselines will be skipped\n");
    return false;
  }
  bool ok = sym(lib, "cublasCreate_v2", create) && sym(lib, "cublasDestroy_v2", destroy) &&
            sym(lib, "cublasSetStream_v2", set_stream) && sym(lib, "cublasGetVersion_v2", get_version) &&
            sym(lib, "cublasGemmEx", gemm_ex) && sym(lib, "cublasGemmStridedBatchedEx", gemm_strided_batched_ex);
  sym(lib, "cublasGemmGroupedBatchedEx", gemm_grouped_batched_ex);  // cuBLAS >= 12.5 only
  if (!ok || create(&handle) != 0) {
    std::fprintf(stderr, "[vk] cuBLAS at %s unusable; baselines skipped\n", path.c_str());
    handle = nullptr;
    return false;
  }
  get_version(handle, &version);
  std::fprintf(stderr, "[vk] cuBLAS %d loaded from %s\n", version, path.c_str());
  return true;
}

bool Nvml::load() {
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return false;
  if (!(sym(lib, "nvmlInit_v2", init) && sym(lib, "nvmlDeviceGetHandleByIndex_v2", handle_by_index) &&
        sym(lib, "nvmlDeviceGetClockInfo", clock_info) && sym(lib, "nvmlDeviceGetMaxClockInfo", max_clock_info) &&
        sym(lib, "nvmlDeviceGetPowerUsage", power_usage) && sym(lib, "nvmlDeviceGetTemperature", temperature) &&
        sym(lib, "nvmlSystemGetDriverVersion", driver_version)))
    return false;
  // NOTE: assumes CUDA device 0 is NVML device 0 (true on the single-GPU device machines).
  if (init() != 0 || handle_by_index(0, &device) != 0) device = nullptr;
  return device != nullptr;
}

double Nvml::sm_clock_mhz() const {
  unsigned v = 0;
  return loaded() && clock_info(device, 1 /*NVML_CLOCK_SM*/, &v) == 0 ? v : NAN;
}
double Nvml::max_sm_clock_mhz() const {
  unsigned v = 0;
  return loaded() && max_clock_info(device, 1, &v) == 0 ? v : NAN;
}
double Nvml::power_w() const {
  unsigned v = 0;
  return loaded() && power_usage(device, &v) == 0 ? v / 1000.0 : NAN;
}
double Nvml::temp_c() const {
  unsigned v = 0;
  return loaded() && temperature(device, 0 /*NVML_TEMPERATURE_GPU*/, &v) == 0 ? v : NAN;
}
std::string Nvml::driver() const {
  char buf[96] = {};
  return loaded() && driver_version(buf, sizeof buf) == 0 ? std::string(buf) : std::string();
}

}  // namespace moesim::vk
