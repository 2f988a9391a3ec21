// Runner core: start-up, probes, the configuration loop under a time budget, timing, rows, and the
// files (runs.csv written right after the probes, periodically and at the end; every ending path,
// watchdog and signals included, finishes the files).
#include "validation_kernels/harness/runner.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "validation_kernels/harness/schema.hpp"
#include "validation_kernels/reference/routing_ref.hpp"

#ifndef VK_GIT_COMMIT
#define VK_GIT_COMMIT ""
#endif
#ifndef VK_NVCC_VERSION
#define VK_NVCC_VERSION ""
#endif

namespace moesim::vk {

volatile std::sig_atomic_t g_interrupted = 0;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

extern "C" void on_signal(int) { g_interrupted = 1; }

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

/// The timing sequence's device operations (timing.hpp) on the runner's stream.
struct CudaTimingOps {
  Runner& r;
  const Launch& fn;
  std::vector<cudaEvent_t>& ev;
  void* flush_buf;
  size_t flush_bytes;
  uint32_t& flush_value;
  void launch() {
    const cudaError_t e = fn();
    if (e != cudaSuccess) throw CudaError(std::string("launch: ") + cudaGetErrorString(e));
  }
  void flush() { VK_CUDA(gpu::touch_buffer(flush_buf, flush_bytes, flush_value++, r.dev().stream())); }
  void record(int slot) { VK_CUDA(cudaEventRecord(ev[static_cast<size_t>(slot)], r.dev().stream())); }
  void drain() { r.dev().drain("timed launches"); }
  double elapsed_us(int a, int b) {
    float ms = 0;
    VK_CUDA(cudaEventElapsedTime(&ms, ev[static_cast<size_t>(a)], ev[static_cast<size_t>(b)]));
    return ms * 1000.0;
  }
  double clock_mhz() { return r.clock_mhz(); }
  double power_w() { return r.nvml().power_w(); }
  double temp_c() { return r.nvml().temp_c(); }
};

}  // namespace

Runner::Runner(const HarnessOptions& o, std::vector<Config> grid)
    : o_(o), grid_(std::move(grid)), dev_(o.watchdog_s, [this](const std::string& why) { fatal(why); }) {}

bool Runner::hopper() const { return gpu::grouped_gemm_wgmma_runs_on(dev_.prop().major, dev_.prop().minor); }

double Runner::clock_mhz() {
  if (nvml_.loaded()) {
    const double v = nvml_.sm_clock_mhz();
    if (std::isfinite(v) && v > 0) return v;
  }
  // No NVML: clock64 cycles over %globaltimer nanoseconds across a 200 us spin, on a drained
  // stream (the copy below is ordered after the probe kernel and waits for it).
  if (gpu::clock_probe(d_clock_, 200000, dev_.stream()) != cudaSuccess) return NAN;
  const auto h = dev_.to_host(d_clock_, 4, "clock probe");
  return h[2] ? static_cast<double>(h[0]) * 1000.0 / static_cast<double>(h[2]) : NAN;
}

std::vector<Timing> Runner::time_launch(const Launch& launch) {
  CudaTimingOps ops{*this, launch, events_, flush_, flush_bytes_, flush_value_};
  TimingParams p;
  p.warmup = o_.warmup_iters;
  p.iters = o_.timed_iters;
  p.batch = o_.batch;
  p.batch_repeats = o_.batch_repeats;
  return time_kernel(ops, p);
}

bool Runner::enabled(const std::string& impl, std::string* why) const {
  const auto it = disabled_.find(impl);
  if (it == disabled_.end()) return true;
  if (why) *why = it->second;
  return false;
}

void Runner::disable(const std::string& impl, const std::string& why, bool invalidate_rows) {
  if (!disabled_.count(impl)) {
    disabled_[impl] = why;
    std::fprintf(stderr, "[vk] %s disabled: %s\n", impl.c_str(), why.c_str());
  }
  if (invalidate_rows) {
    invalidate_.insert(impl);
    failed_.insert(impl);
  }
}

CsvRow Runner::base_row(const Config& c) const {
  CsvRow b;
  b.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("config_id", c.config_id);
  b.set("heldout", c.heldout ? 1 : 0).set("kernel_family", to_string(c.family));
  b.set("dist_seed", std::to_string(c.seed)).set("l2_mode", "cold");
  b.set("flops", config_flops(c)).set("bytes_min", config_bytes(c));
  switch (c.family) {
    case Family::kRouting: {
      const RoutingConfig& r = c.routing;
      b.set("dtype_in", "bf16").set("dtype_out", "bf16");
      b.set("model", r.model).set("num_experts_total", r.experts).set("num_experts_local", r.experts);
      b.set("topk", r.topk).set("tokens", r.tokens).set("routed_rows", r.tokens * r.topk).set("K", r.hidden);
      b.set("N", 0).set("capacity", ref::capacity_for(r.tokens, r.topk, r.experts, r.capacity_factor));
      b.set("distribution", "router_normal_logits");
      break;
    }
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode: {
      const AttentionConfig& a = c.attention;
      b.set("dtype_in", "bf16").set("dtype_out", "bf16").set("model", a.model);
      b.set("tokens", a.batch * a.q_len).set("attn_batch", a.batch).set("q_len", a.q_len).set("kv_len", a.kv_len);
      b.set("heads", a.heads).set("kv_heads", a.kv_heads).set("head_dim", a.head_dim).set("causal", a.causal ? 1 : 0);
      b.set("K", a.head_dim).set("N", 0).set("distribution", "normal");
      break;
    }
    case Family::kElementwise: {
      const ElementwiseConfig& e = c.elementwise;
      b.set("dtype_in", "bf16").set("dtype_out", e.op == ElementwiseOp::kQuantFp8 ? "fp8_e4m3" : "bf16");
      b.set("model", e.model).set("tokens", e.tokens);
      b.set("K", e.op == ElementwiseOp::kSwiglu ? 2 * e.hidden : e.hidden).set("N", e.hidden);
      b.set("distribution", "normal");
      break;
    }
    default: {
      const GemmConfig& g = c.gemm;
      const CountStats s = count_stats(g.counts);
      b.set("dtype_in", to_string(g.dtype)).set("dtype_out", "bf16");
      b.set("model", std::string(g.shape.model) + "/" + g.shape.layer);
      b.set("num_experts_total", g.experts_local).set("num_experts_local", g.experts_local);
      b.set("tokens", s.total).set("routed_rows", s.total).set("K", g.shape.k).set("N", g.shape.n);
      b.set("capacity", g.capacity)
          .set("distribution", c.family == Family::kDenseGemm ? "dense" : to_string(g.distribution))
          .set("dist_param", g.dist_param);
      b.set("m_min", s.m_min).set("m_max", s.m_max).set("m_mean", s.m_mean).set("m_cv", s.m_cv);
      b.set("n_active_experts", s.n_active);
      const int64_t tiles = gemm_tiles(g.counts, g.shape.n, 128, 128);
      b.set("tiles_total", tiles).set("waves", static_cast<double>(tiles) / std::max(1, dev_.sms()));
      b.set("variant", c.family == Family::kGroupedGemmMasked ? "masked"
                       : c.family == Family::kDenseGemm       ? "dense"
                                                              : "contiguous");
    }
  }
  return b;
}

void Runner::write_rows(const CsvRow& base, const std::string& impl, const std::string& impl_config,
                        const std::string& status, double err, const std::vector<Timing>& timings,
                        const std::string& notes) {
  CsvRow row0 = base;
  row0.set("impl", impl).set("impl_config", impl_config).set("status", status).set("max_rel_err", err);
  if (!notes.empty()) row0.set("notes", notes);
  if (timings.empty()) {
    row0.set("order_index", order_index_++);
    meas_->write(row0);
    return;
  }
  for (const Timing& t : timings) {
    CsvRow row = row0;
    row.set("timing_method", t.method).set("batch", t.batch).set("warmup_iters", t.warmup);
    row.set("timed_iters", t.iters).set("l2_mode", t.method == "events_cold_l2" ? "cold" : "warm");
    row.set("time_us_median", t.stats.median).set("time_us_mean", t.stats.mean).set("time_us_min", t.stats.min);
    row.set("time_us_p10", t.stats.p10).set("time_us_p90", t.stats.p90).set("time_us_std", t.stats.std);
    row.set("sm_clock_mhz_before", t.clock_before).set("sm_clock_mhz_after", t.clock_after);
    row.set("clock_drift_flag", t.drift() ? 1 : 0).set("power_w", t.power).set("temp_c", t.temp);
    row.set("order_index", order_index_++);
    meas_->write(row);
  }
}

void Runner::measure(const Config& c, const CsvRow& base, const std::string& impl, const std::string& impl_config,
                     const Launch& launch, const std::function<CheckResult()>& check) {
  std::string why;
  if (!enabled(impl, &why) || g_interrupted) {
    // Skipped by option or after a failed self-test / check (the configuration is absent for it),
    // or the run is stopping.
    return;
  }
  set_current(&c, &base, impl, "check");
  CheckResult r;
  try {
    r = check();
  } catch (const CudaError& e) {
    write_rows(base, impl, impl_config, "error", NAN, {}, e.what());
    cudaGetLastError();
    set_current(nullptr, nullptr, "", "");
    return;
  }
  if (!r.ok) {
    write_rows(base, impl, impl_config, "failed_check", r.err, {},
               "not timed: failed the reference check" + (r.note.empty() ? "" : ": " + r.note));
    disable(impl, "failed the reference check of config " + std::to_string(c.config_id), true);
    set_current(nullptr, nullptr, "", "");
    return;
  }
  set_current(&c, &base, impl, "timing");
  std::vector<Timing> t;
  try {
    t = time_launch(launch);
  } catch (const CudaError& e) {
    write_rows(base, impl, impl_config, "error", r.err, {}, e.what());
    cudaGetLastError();
    set_current(nullptr, nullptr, "", "");
    return;
  }
  write_rows(base, impl, impl_config, "ok", r.err, t, r.note);
  set_current(nullptr, nullptr, "", "");
}

void Runner::probes(CsvRow& run) {
  cudaStream_t s = dev_.stream();
  // HBM copy: 1 GiB each way; bytes = read + write.
  const size_t bytes = size_t{1} << 30;
  auto* src = dev_.alloc<int4>(bytes / 16);
  auto* dst = dev_.alloc<int4>(bytes / 16);
  VK_CUDA(cudaMemsetAsync(src, 1, bytes, s));
  auto copy = time_launch([&] { return gpu::copy_probe(src, dst, bytes / 16, s); });
  run.set("hbm_gbps_probed", 2.0 * static_cast<double>(bytes) / (copy[0].stats.median * 1e3));
  dev_.free(src);
  dev_.free(dst);
  float* sink = dev_.alloc<float>(1);
  double flops = 0;
  const int blocks = sms() * 4;
  auto bf = time_launch([&] { return gpu::mma_peak_bf16(blocks, 4096, sink, &flops, s); });
  run.set("bf16_tflops_probed", flops / (bf[0].stats.median * 1e6));
  if (gpu::mma_peak_fp8(blocks, 1, sink, &flops, s) == cudaSuccess) {
    auto f8 = time_launch([&] { return gpu::mma_peak_fp8(blocks, 4096, sink, &flops, s); });
    run.set("fp8_tflops_probed", flops / (f8[0].stats.median * 1e6));
  }
  cudaGetLastError();
  auto empty = time_launch([&] { return gpu::empty_kernel(s); });
  run.set("launch_us_probed", empty.back().stats.median);
  dev_.free(sink);
  dev_.drain("probes");
  VK_CUDA(gpu::clock_probe(d_clock_, 10000000, s));
  const auto h = dev_.to_host(d_clock_, 4, "clock probe");  // ordered after the probe kernel
  run.set("sm_clock_probed_mhz", h[2] ? static_cast<double>(h[0]) * 1000.0 / static_cast<double>(h[2]) : NAN);
}

void Runner::write_runs_csv() {
  run_row_.set("configs_planned", static_cast<int64_t>(grid_.size())).set("configs_done", done_);
  run_row_.set("configs_skipped_budget", skipped_budget_).set("run_status", run_status_);
  run_row_.set("wall_s", now_s() - t0_);
  std::vector<std::string> dis;
  for (const auto& [impl, why] : disabled_) dis.push_back(impl + ": " + why);
  run_row_.set("disabled_impls", join(dis, "; "));
  upsert_csv_row(o_.out_dir + "/runs.csv", column_vector(kRunsColumns), "run_id", run_row_);
  last_runs_write_ = now_s();
}

void Runner::finish_files() {
  if (meas_) meas_->close();
  if (counts_) counts_->close();
  if (selftest_) selftest_->close();
  if (!invalidate_.empty()) {
    const std::vector<std::string> impls(invalidate_.begin(), invalidate_.end());
    const std::string note = "invalidated: a reference check of this implementation failed in this run";
    const std::string path = o_.out_dir + "/measurements.csv";
    int64_t n = 0;
    if (o_.invalidate_directory) {
      // Every run in this directory used this binary (one directory per run_on_gpu.sh invocation).
      const CsvFile runs = read_csv(o_.out_dir + "/runs.csv");
      const int c = runs.column("run_id");
      std::set<std::string> ids = {o_.run_id};
      if (c >= 0)
        for (const auto& r : runs.rows) ids.insert(r[static_cast<size_t>(c)]);
      for (const std::string& id : ids) n += restatus_rows(path, id, impls, "ok", "invalidated", note);
    } else {
      n = restatus_rows(path, o_.run_id, impls, "ok", "invalidated", note);
    }
    std::fprintf(stderr, "[vk] %lld rows of %s marked invalidated\n", static_cast<long long>(n),
                 join(impls, ", ").c_str());
  }
  if (!o_.skip_file.empty() && !failed_.empty()) {
    std::ofstream f(o_.skip_file, std::ios::app);
    for (const std::string& i : failed_) f << i << "\n";
  }
  write_runs_csv();
}

void Runner::fatal(const std::string& why) {
  static bool in_fatal = false;
  if (in_fatal) std::_Exit(kExitFatalKernel);
  in_fatal = true;
  std::fprintf(stderr, "[vk] FATAL: %s (impl '%s', %s)\n", why.c_str(), cur_impl_.c_str(), cur_phase_.c_str());
  try {
    const bool hang = why.rfind("watchdog", 0) == 0;
    run_status_ = hang ? "hang" : "device_error";
    if (cur_phase_ == "selftest" && selftest_) {
      CsvRow r = cur_base_;
      r.set("status", hang ? "hang" : "error").set("notes", why);
      selftest_->write(r);
    } else if (cur_config_ && meas_) {
      write_rows(cur_base_, cur_impl_, "", "error", NAN, {}, why + " (during " + cur_phase_ + ")");
    }
    if (!cur_impl_.empty()) disable(cur_impl_, why, true);
    run_row_.set("notes", o_.notes + (o_.notes.empty() ? "" : "; ") + "stopped: " + why);
    finish_files();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[vk] while finishing the files: %s\n", e.what());
  }
  std::fflush(stderr);
  std::fflush(stdout);
  std::_Exit(kExitFatalKernel);  // no CUDA teardown: it would block behind the stuck kernel
}

void Runner::dispatch(const Config& c) {
  switch (c.family) {
    case Family::kRouting:
      run_routing(c);
      break;
    case Family::kAttentionPrefill:
    case Family::kAttentionDecode:
      run_attention(c);
      break;
    case Family::kElementwise:
      run_elementwise(c);
      break;
    default:
      if (c.gemm.dtype == GemmDtype::kFp8E4m3)
        run_gemm_fp8(c);
      else
        run_gemm(c);
  }
}

int Runner::run() {
  t0_ = now_s();
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  dev_.watchdog().set_interrupt_flag(&g_interrupted);
  dev_.init(0);
  const cudaDeviceProp& prop = dev_.prop();
  for (const std::string& s : o_.skip_impls) disable(s, "--skip-impl", false);
  if (!hopper())
    for (const char* i : {"vk_wgmma", "vk_wgmma_masked", "vk_wgmma_fp8"})
      disable(i, "sm_90a kernel; device cc " + std::to_string(prop.major) + "." + std::to_string(prop.minor), false);
  nvml_.load();
  if (cublas_.load())
    cublas_.set_stream(cublas_.handle, dev_.stream());
  else
    for (const char* i : {"cublas_concat", "cublas_loop", "cublas_batched_padded", "cublas_grouped", "cublas"})
      disable(i, "cuBLAS not found", false);
  if (cublas_.loaded() && !cublas_.gemm_grouped_batched_ex)
    disable("cublas_grouped", "cublasGemmGroupedBatchedEx absent (cuBLAS < 12.5)", false);
  std::filesystem::create_directories(o_.out_dir);
  const auto mode = CsvWriter::Mode::kAppend;
  meas_ = std::make_unique<CsvWriter>(o_.out_dir + "/measurements.csv", column_vector(kMeasurementColumns), mode);
  counts_ = std::make_unique<CsvWriter>(o_.out_dir + "/counts.csv", column_vector(kCountsColumns), mode);
  selftest_ = std::make_unique<CsvWriter>(o_.out_dir + "/selftest.csv", column_vector(kSelftestColumns), mode);

  flush_bytes_ = std::max<size_t>(2 * static_cast<size_t>(prop.l2CacheSize), size_t{128} << 20);
  flush_ = dev_.alloc<unsigned char>(flush_bytes_);
  d_clock_ = dev_.alloc<unsigned long long>(4);
  events_.resize(2 * static_cast<size_t>(std::max({o_.timed_iters, o_.batch_repeats, 1})));
  for (auto& e : events_) VK_CUDA(cudaEventCreate(&e));

  CsvRow& run = run_row_;
  run.set("schema_version", kSchemaVersion).set("run_id", o_.run_id);
  run.set("git_commit", o_.git_commit.empty() ? std::string(VK_GIT_COMMIT) : o_.git_commit);
  run.set("gpu_name", prop.name).set("sm_count", prop.multiProcessorCount);
  run.set("cc", std::to_string(prop.major) + "." + std::to_string(prop.minor));
  run.set("l2_bytes", static_cast<int64_t>(prop.l2CacheSize))
      .set("hbm_bytes", static_cast<int64_t>(prop.totalGlobalMem));
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  const std::string nvml_drv = nvml_.loaded() ? nvml_.driver() : std::string();
  run.set("driver_version", nvml_drv.empty() ? std::to_string(drv) : nvml_drv).set("runtime_version", rt);
  run.set("cublas_version", cublas_.loaded() ? std::to_string(cublas_.version) : "absent");
  run.set("cublas_path", cublas_.loaded() ? cublas_.path : std::string());
  run.set("nvcc_version", VK_NVCC_VERSION).set("sm_clock_max_mhz", nvml_.max_sm_clock_mhz());
  run.set("grid", o_.grid.kind == GridKind::kQuick  ? "quick"
                  : o_.grid.kind == GridKind::kFull ? "full"
                                                    : "tiny")
      .set("seed", std::to_string(o_.grid.seed));
  run.set("nvml", nvml_.loaded() ? 1 : 0).set("notes", o_.notes).set("budget_s", o_.budget_s);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  run.set("host", host);
  write_runs_csv();  // something on disk before any kernel of ours runs

  alloc_pools();
  // Process warm-up: >= 300 ms of tensor-core work so clocks settle before the first measurement.
  {
    float* sink = dev_.alloc<float>(1);
    double flops = 0;
    const double w0 = now_s();
    while (now_s() - w0 < 0.3) {
      VK_CUDA(gpu::mma_peak_bf16(sms() * 4, 4096, sink, &flops, dev_.stream()));
      dev_.drain("warm-up");
    }
    dev_.free(sink);
  }
  probes(run);
  write_runs_csv();  // right after the probes

  if (o_.selftest) {
    selftest();
    meas_->flush();
    selftest_->flush();
    write_runs_csv();
  }
  if (o_.selftest_only) {
    run_status_ = "complete";
    finish_files();
    std::printf("vk_harness: self-test done (%zu implementation(s) failed), output in %s\n", selftest_failed_.size(),
                o_.out_dir.c_str());
    return kExitOk;
  }

  // The budget covers the whole process; the estimates are rescaled by measured / estimated time.
  DeviceModel model;
  model.warmup = o_.warmup_iters;
  model.iters = o_.timed_iters;
  model.batch = o_.batch;
  model.batch_repeats = o_.batch_repeats;
  const std::vector<size_t> order =
      o_.budget_s > 0 ? information_order(grid_, model) : random_order(grid_.size(), o_.grid.seed);
  double est_done = 0, wall_done = 0;
  std::string end_status = "complete";
  for (size_t pos = 0; pos < order.size(); ++pos) {
    const size_t idx = order[pos];
    if (g_interrupted) {
      end_status = "interrupted";
      break;
    }
    const Config& c = grid_[idx];
    const double est = estimate_seconds(c, planned_impls(c).size(), model);
    if (o_.budget_s > 0) {
      const double ratio = est_done > 1.0 ? std::clamp(wall_done / est_done, 0.25, 8.0) : 1.5;
      const double left = o_.budget_s - (now_s() - t0_);
      if (left < 0.5) {
        end_status = "budget_exhausted";
        skipped_budget_ += static_cast<int64_t>(order.size() - pos);
        break;
      }
      if (ratio * est > left) {
        ++skipped_budget_;
        continue;
      }
    }
    if (is_gemm(c.family)) {
      CsvRow cr;
      cr.set("schema_version", kSchemaVersion).set("run_id", o_.run_id).set("config_id", c.config_id);
      cr.set("counts", encode_counts(c.gemm.counts));
      counts_->write(cr);
    }
    const double c0 = now_s();
    try {
      dispatch(c);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "[vk] config %lld: %s\n", static_cast<long long>(c.config_id), ex.what());
      write_rows(base_row(c), "harness", "", "error", NAN, {}, ex.what());
      cudaGetLastError();
    }
    wall_done += now_s() - c0;
    est_done += est;
    ++done_;
    if (o_.verbose || done_ % 50 == 0)
      std::fprintf(stderr, "[vk] %lld/%zu configurations, %.0f s, measured/estimated time %.2f\n",
                   static_cast<long long>(done_), grid_.size(), now_s() - t0_, est_done > 0 ? wall_done / est_done : 0);
    meas_->flush();
    counts_->flush();
    if (now_s() - last_runs_write_ > 20) write_runs_csv();
  }
  if (end_status == "complete" && skipped_budget_ > 0) end_status = "budget_exhausted";
  if (g_interrupted) end_status = "interrupted";
  run_status_ = end_status;
  finish_files();
  std::printf("vk_harness: %lld/%zu configurations (%lld skipped by the budget), status %s, output in %s\n",
              static_cast<long long>(done_), grid_.size(), static_cast<long long>(skipped_budget_), run_status_.c_str(),
              o_.out_dir.c_str());
  std::fflush(stdout);
  return run_status_ == "interrupted" ? kExitInterrupted : kExitOk;
}

int run_measurements(const HarnessOptions& options, std::vector<Config> grid) {
  Runner runner(options, std::move(grid));
  const int rc = runner.run();
  std::fflush(stdout);
  std::fflush(stderr);
  // Skip global CUDA teardown (a library destructor must not be the thing that blocks).
  std::_Exit(rc);
}

}  // namespace moesim::vk
