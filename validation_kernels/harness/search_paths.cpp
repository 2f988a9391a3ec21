#include "validation_kernels/harness/search_paths.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>

namespace moesim::vk {
namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string parent(const std::string& p) {
  std::string s = p;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  const auto slash = s.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : s.substr(0, slash);
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

class Candidates {
 public:
  void add(const std::string& p) {
    if (p.empty() || p.find("/stubs/") != std::string::npos) return;
    if (seen_.insert(p).second) list_.push_back(p);
  }
  std::vector<std::string> take() { return std::move(list_); }

 private:
  std::set<std::string> seen_;
  std::vector<std::string> list_;
};

/// site-packages / dist-packages folders of a Python prefix (lib/python3.*/...).
std::vector<std::string> site_dirs(const SearchEnv& env, const std::string& prefix) {
  std::vector<std::string> out;
  for (const char* lib : {"lib", "lib64"}) {
    const std::string libdir = join(prefix, lib);
    for (const std::string& name : env.list_dir(libdir))
      if (name.rfind("python3", 0) == 0)
        for (const char* sp : {"site-packages", "dist-packages"}) out.push_back(join(join(libdir, name), sp));
  }
  out.push_back(join(prefix, "lib/python3/dist-packages"));  // Debian/Ubuntu system Python
  return out;
}

/// Python prefixes to search, in order: active environments, those on PATH, common installs.
std::vector<std::string> python_prefixes(const SearchEnv& env) {
  std::vector<std::string> out;
  if (!env.virtual_env.empty()) out.push_back(env.virtual_env);
  if (!env.conda_prefix.empty()) out.push_back(env.conda_prefix);
  for (const std::string& dir : split(env.path, ':'))
    if (env.exists(join(dir, "python3")) || env.exists(join(dir, "python"))) out.push_back(parent(dir));
  for (const std::string& name : env.list_dir("/opt")) {
    out.push_back(join(join("/opt", name), ".venv"));
    out.push_back(join("/opt", name));
  }
  for (const char* p : {"/opt/conda", "/usr/local", "/usr"}) out.push_back(p);
  if (!env.home.empty()) out.push_back(join(env.home, ".local"));
  return out;
}

}  // namespace

std::vector<std::string> parse_ldconfig(const std::string& text, const std::string& soname) {
  // Lines look like: "\tlibcublas.so.13 (libc6,x86-64) => /usr/local/cuda/lib64/libcublas.so.13"
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto a = line.find_first_not_of(" \t");
    if (a == std::string::npos || line.compare(a, soname.size(), soname) != 0) continue;
    const auto after = a + soname.size();
    if (after < line.size() && line[after] != ' ' && line[after] != '\t') continue;  // libcublas.so.13x
    if (line.find("x86-64") == std::string::npos && line.find("x86_64") == std::string::npos) continue;
    const auto arrow = line.find("=> ");
    if (arrow == std::string::npos) continue;
    std::string path = line.substr(arrow + 3);
    while (!path.empty() && (path.back() == ' ' || path.back() == '\r')) path.pop_back();
    out.push_back(path);
  }
  return out;
}

std::vector<std::string> cublas_candidates(const SearchEnv& env) {
  Candidates c;
  c.add(env.override_path);
  const std::vector<std::string> sonames = {"libcublas.so.13", "libcublas.so.12"};
  c.add(sonames[0]);
  for (const std::string& so : sonames) {
    for (const std::string& p : parse_ldconfig(env.ldconfig_output, so)) c.add(p);
    for (const std::string& d : split(env.ld_library_path, ':')) c.add(join(d, so));
    std::vector<std::string> toolkits;
    if (!env.cuda_home.empty()) toolkits.push_back(env.cuda_home);
    toolkits.push_back("/usr/local/cuda");
    for (const std::string& name : env.list_dir("/usr/local"))
      if (name.rfind("cuda-", 0) == 0) toolkits.push_back(join("/usr/local", name));
    for (const std::string& t : toolkits)
      for (const char* sub : {"lib64", "lib", "targets/x86_64-linux/lib"}) c.add(join(join(t, sub), so));
    c.add(join("/usr/lib/x86_64-linux-gnu", so));
    for (const std::string& prefix : python_prefixes(env))
      for (const std::string& site : site_dirs(env, prefix))
        for (const char* sub : {"nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/cu12/lib"}) {
          const std::string p = join(join(site, sub), so);
          if (env.exists(p)) c.add(p);
        }
  }
  c.add(sonames[1]);
  c.add("libcublas.so");
  return c.take();
}

std::vector<std::string> nvml_candidates(const SearchEnv& env) {
  Candidates c;
  const std::string so = "libnvidia-ml.so.1";
  c.add(env.override_path);
  c.add(so);
  for (const std::string& p : parse_ldconfig(env.ldconfig_output, so)) c.add(p);
  if (!env.driver_dir.empty()) c.add(join(env.driver_dir, so));
  for (const std::string& d : split(env.ld_library_path, ':')) c.add(join(d, so));
  for (const char* d :
       {"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"})
    c.add(join(d, so));
  return c.take();
}

SearchEnv real_search_env(const char* override_var) {
  SearchEnv e;
  auto env = [](const char* n) {
    const char* v = std::getenv(n);
    return v ? std::string(v) : std::string();
  };
  e.override_path = override_var ? env(override_var) : std::string();
  e.path = env("PATH");
  e.cuda_home = env("CUDA_HOME").empty() ? env("CUDA_PATH") : env("CUDA_HOME");
  e.virtual_env = env("VIRTUAL_ENV");
  e.conda_prefix = env("CONDA_PREFIX");
  e.home = env("HOME");
  e.ld_library_path = env("LD_LIBRARY_PATH");
  for (const char* cmd :
       {"/sbin/ldconfig -p 2>/dev/null", "/usr/sbin/ldconfig -p 2>/dev/null", "ldconfig -p 2>/dev/null"}) {
    if (FILE* p = popen(cmd, "r")) {
      char buf[4096];
      std::string out;
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
      const int rc = pclose(p);
      if (rc == 0 && !out.empty()) {
        e.ldconfig_output = out;
        break;
      }
    }
  }
  e.list_dir = [](const std::string& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& ent : std::filesystem::directory_iterator(dir, ec))
      names.push_back(ent.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  e.exists = [](const std::string& p) {
    std::error_code ec;
    return std::filesystem::exists(p, ec);
  };
  return e;
}

}  // namespace moesim::vk
