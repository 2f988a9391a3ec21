#include "validation_kernels/harness/dl.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "validation_kernels/harness/search_paths.hpp"

namespace moesim::vk {
#ifdef VK_MOCK_CUDA
namespace mock {
bool install_cublas(Cublas& c);  // tests/mock_cuda.cpp
}
#endif
namespace {

template <typename F>
bool sym(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

/// Folder libcuda.so.1 was loaded from (the CUDA runtime has loaded it by now), or empty.
std::string driver_dir() {
  void* h = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  if (!h) return {};
  std::string dir;
  struct link_map* lm = nullptr;
  if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name) {
    const std::string p = lm->l_name;
    const auto slash = p.rfind('/');
    if (slash != std::string::npos) dir = p.substr(0, slash);
  }
  dlclose(h);
  return dir;
}

void* open_first(const std::vector<std::string>& candidates, std::string* path, const char* what) {
  for (const std::string& c : candidates) {
    if (void* lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      *path = c;
      return lib;
    }
  }
  std::fprintf(stderr, "[vk] %s not found (%zu places tried)\n", what, candidates.size());
  return nullptr;
}

}  // namespace

bool Cublas::load() {
#ifdef VK_MOCK_CUDA
  return mock::install_cublas(*this);
#endif
  SearchEnv env = real_search_env("VK_CUBLAS_PATH");
  void* lib = open_first(cublas_candidates(env), &path, "cuBLAS (set VK_CUBLAS_PATH)");
  if (!lib) {
    std::fprintf(stderr, "[vk] cuBLAS baselines will be skipped\n");
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
#ifdef VK_MOCK_CUDA
  return false;  // the mock exercises the clock64 / %globaltimer probe path
#endif
  SearchEnv env = real_search_env("VK_NVML_PATH");
  env.driver_dir = driver_dir();
  std::string path;
  void* lib = open_first(nvml_candidates(env), &path, "NVML (clocks then come from the clock64 probe)");
  if (!lib) return false;
  if (!(sym(lib, "nvmlInit_v2", init) && sym(lib, "nvmlDeviceGetHandleByIndex_v2", handle_by_index) &&
        sym(lib, "nvmlDeviceGetClockInfo", clock_info) && sym(lib, "nvmlDeviceGetMaxClockInfo", max_clock_info) &&
        sym(lib, "nvmlDeviceGetPowerUsage", power_usage) && sym(lib, "nvmlDeviceGetTemperature", temperature) &&
        sym(lib, "nvmlSystemGetDriverVersion", driver_version)))
    return false;
  // NOTE: assumes CUDA device 0 is NVML device 0 (true on the single-GPU device machines).
  if (init() != 0 || handle_by_index(0, &device) != 0) device = nullptr;
  if (device) std::fprintf(stderr, "[vk] NVML loaded from %s\n", path.c_str());
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
