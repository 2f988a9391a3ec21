// The timing sequence of one (configuration, implementation), written once against an abstract
// set of device operations so a CPU test can check its ordering with a recording fake:
//   * warm-up launches, then a drain, THEN the "before" clock reading (an idle GPU clocks down
//     between configurations; reading before the warm-up flagged drift on good rows);
//   * clock readings only on a drained stream (the no-NVML probe is a kernel of its own, and a
//     reading taken while the previous kernel still ran was garbage);
//   * per iteration: L2 flush outside the event pair, event, launch, event;
//   * one drain at the end, then the "after" reading; then, for short kernels, a batched warm
//     measurement with its own before/after readings.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

namespace moesim::vk {

struct Stats {
  double median = NAN, mean = NAN, min = NAN, p10 = NAN, p90 = NAN, std = NAN;
};

/// Median (mean of the middle two for even sizes), nearest-rank p10/p90, population std.
inline Stats summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto q = [&](double p) { return v[static_cast<size_t>(std::lround(p * static_cast<double>(v.size() - 1)))]; };
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.min = v.front();
  s.p10 = q(0.1);
  s.p90 = q(0.9);
  double var = 0;
  for (double x : v) var += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(var / static_cast<double>(v.size()));
  return s;
}

struct Timing {
  Stats stats;
  std::string method;
  int batch = 1, warmup = 0, iters = 0;
  double clock_before = NAN, clock_after = NAN, power = NAN, temp = NAN;
  /// clock_drift_flag: the SM clock moved more than 3% between the readings (or one is missing).
  bool drift() const {
    if (!std::isfinite(clock_before) || !std::isfinite(clock_after)) return false;
    return std::fabs(clock_after - clock_before) > 0.03 * clock_before;
  }
};

struct TimingParams {
  int warmup = 25;
  int iters = 50;
  int batch = 100;               ///< launches per batched measurement
  int batch_repeats = 10;        ///< batched measurements
  double batched_below_us = 20;  ///< cold median under this also gets a batched warm row
};

/// Ops must provide:
///   void launch();              enqueue the measured kernel(s); throws on a launch error
///   void flush();               enqueue the L2 flush
///   void record(int slot);      enqueue event `slot` (slots 0 .. 2*max(iters, batch_repeats)-1)
///   void drain();               wait until everything enqueued has finished (under the watchdog)
///   double elapsed_us(int a, int b);  time between two recorded, drained events
///   double clock_mhz();         SM clock; called only on a drained stream
///   double power_w(); double temp_c();
template <class Ops>
std::vector<Timing> time_kernel(Ops& ops, const TimingParams& p) {
  std::vector<Timing> out;
  Timing t;
  t.method = "events_cold_l2";
  for (int i = 0; i < p.warmup; ++i) ops.launch();
  ops.drain();
  t.clock_before = ops.clock_mhz();
  t.power = ops.power_w();
  t.temp = ops.temp_c();
  t.warmup = p.warmup;
  t.iters = p.iters;
  for (int i = 0; i < p.iters; ++i) {
    ops.flush();
    ops.record(2 * i);
    ops.launch();
    ops.record(2 * i + 1);
  }
  ops.drain();
  t.clock_after = ops.clock_mhz();
  std::vector<double> us;
  for (int i = 0; i < p.iters; ++i) us.push_back(ops.elapsed_us(2 * i, 2 * i + 1));
  t.stats = summarize(us);
  out.push_back(t);
  if (p.batch > 0 && p.batch_repeats > 0 && t.stats.median < p.batched_below_us) {
    Timing b;
    b.method = "events_batched_warm_l2";
    b.batch = p.batch;
    b.warmup = 0;
    b.iters = p.batch_repeats;
    b.clock_before = ops.clock_mhz();  // stream drained above
    b.power = ops.power_w();
    b.temp = ops.temp_c();
    for (int r = 0; r < p.batch_repeats; ++r) {
      ops.record(2 * r);
      for (int i = 0; i < p.batch; ++i) ops.launch();
      ops.record(2 * r + 1);
    }
    ops.drain();
    b.clock_after = ops.clock_mhz();
    std::vector<double> per;
    for (int r = 0; r < p.batch_repeats; ++r) per.push_back(ops.elapsed_us(2 * r, 2 * r + 1) / p.batch);
    b.stats = summarize(per);
    out.push_back(b);
  }
  return out;
}

}  // namespace moesim::vk
