// Where the harness looks for the optional run-time libraries (cuBLAS, NVML). Pure host logic over
// an injectable view of the environment and the file system, so the search order is testable on
// any machine; dl.cpp feeds it the real environment, `ldconfig -p` and std::filesystem.
//
// cuBLAS is not carried to the GPU machine (~600 MB): it is found where the CUDA toolkit puts it
// (lib64 of the toolkit, the loader cache) or where PyTorch's CUDA 13 wheels put it
// (site-packages/nvidia/cu13/lib, CUDA 12 wheels: nvidia/cublas/lib), in any Python environment
// whose bin/ is on PATH, VIRTUAL_ENV, CONDA_PREFIX, /opt/*/.venv, /usr/local, /usr, ~/.local.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace moesim::vk {

struct SearchEnv {
  std::string override_path;    ///< VK_CUBLAS_PATH / VK_NVML_PATH: tried first
  std::string ldconfig_output;  ///< text of `ldconfig -p` (may be empty)
  std::string path;             ///< $PATH
  std::string cuda_home;        ///< $CUDA_HOME or $CUDA_PATH
  std::string virtual_env;      ///< $VIRTUAL_ENV
  std::string conda_prefix;     ///< $CONDA_PREFIX
  std::string home;             ///< $HOME
  std::string ld_library_path;  ///< $LD_LIBRARY_PATH
  std::string driver_dir;       ///< directory libcuda.so.1 was loaded from (NVML lives beside it)
  /// Directory listing (names only; empty when absent) and existence, injectable for tests.
  std::function<std::vector<std::string>(const std::string&)> list_dir;
  std::function<bool(const std::string&)> exists;
};

/// Real environment, `ldconfig -p` (from /sbin/ldconfig, /usr/sbin/ldconfig or PATH), real file system.
SearchEnv real_search_env(const char* override_var);

/// Full paths of `soname` listed by `ldconfig -p` output, in its order (x86-64 entries).
std::vector<std::string> parse_ldconfig(const std::string& ldconfig_output, const std::string& soname);

/// Ordered, de-duplicated dlopen candidates for cuBLAS: the override, the plain sonames (the
/// loader's own search), ldconfig hits, LD_LIBRARY_PATH, the toolkit's lib64 folders, then every
/// Python environment's nvidia/cu13/lib and nvidia/cublas/lib. .so.13 before .so.12. Paths under
/// a `stubs` folder are never returned (stub libraries load but fail every call).
std::vector<std::string> cublas_candidates(const SearchEnv& env);

/// Same for NVML (libnvidia-ml.so.1): override, soname, ldconfig, the driver's own folder,
/// LD_LIBRARY_PATH, /usr/local/nvidia/lib64, /usr/lib/x86_64-linux-gnu, /usr/lib64.
std::vector<std::string> nvml_candidates(const SearchEnv& env);

}  // namespace moesim::vk
