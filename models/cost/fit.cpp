#include "models/cost/fit.hpp"

#include <cmath>
#include <stdexcept>

namespace moesim::models::cost {

namespace {
double half_sq(const std::vector<double>& r) {
  double s = 0;
  for (double x : r) s += x * x;
  return 0.5 * s;
}

/// Solves A x = b for a small symmetric positive-definite A by Gaussian elimination with
/// partial pivoting (robust enough when the damping makes A well conditioned).
bool solve(std::vector<std::vector<double>> a, std::vector<double> b, std::vector<double>& x) {
  const std::size_t n = b.size();
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t piv = c;
    for (std::size_t r = c + 1; r < n; ++r)
      if (std::fabs(a[r][c]) > std::fabs(a[piv][c])) piv = r;
    if (!(std::fabs(a[piv][c]) > 0)) return false;
    std::swap(a[c], a[piv]);
    std::swap(b[c], b[piv]);
    for (std::size_t r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k < n; ++k) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  x.assign(n, 0);
  for (std::size_t i = n; i-- > 0;) {
    double s = b[i];
    for (std::size_t k = i + 1; k < n; ++k) s -= a[i][k] * x[k];
    x[i] = s / a[i][i];
    if (!std::isfinite(x[i])) return false;
  }
  return true;
}
}  // namespace

LmResult levenberg_marquardt(const ResidualFn& fn, std::vector<double> theta, const LmOptions& opt) {
  const std::size_t np = theta.size();
  std::vector<double> r;
  if (!fn(theta, r)) throw std::invalid_argument("least squares: the residuals are not finite at the start point");
  const std::size_t nr = r.size();
  double cost = half_sq(r);
  double lambda = opt.initial_lambda;
  LmResult res;
  std::vector<std::vector<double>> jac(nr, std::vector<double>(np));
  std::vector<double> rp, rm, trial;
  for (int it = 0; it < opt.max_iterations; ++it) {
    res.iterations = it + 1;
    // Central-difference Jacobian; fall back to a one-sided difference where one side fails.
    for (std::size_t j = 0; j < np; ++j) {
      std::vector<double> tp = theta, tm = theta;
      tp[j] += opt.step;
      tm[j] -= opt.step;
      const bool okp = fn(tp, rp) && rp.size() == nr;
      const bool okm = fn(tm, rm) && rm.size() == nr;
      for (std::size_t i = 0; i < nr; ++i) {
        if (okp && okm)
          jac[i][j] = (rp[i] - rm[i]) / (2 * opt.step);
        else if (okp)
          jac[i][j] = (rp[i] - r[i]) / opt.step;
        else if (okm)
          jac[i][j] = (r[i] - rm[i]) / opt.step;
        else
          jac[i][j] = 0;
      }
    }
    std::vector<std::vector<double>> jtj(np, std::vector<double>(np, 0));
    std::vector<double> jtr(np, 0);
    for (std::size_t i = 0; i < nr; ++i)
      for (std::size_t a = 0; a < np; ++a) {
        jtr[a] += jac[i][a] * r[i];
        for (std::size_t b = 0; b < np; ++b) jtj[a][b] += jac[i][a] * jac[i][b];
      }
    bool improved = false;
    for (int tries = 0; tries < 30; ++tries) {
      auto damped = jtj;
      for (std::size_t a = 0; a < np; ++a) damped[a][a] += lambda * (jtj[a][a] > 0 ? jtj[a][a] : 1.0);
      std::vector<double> neg(np), delta;
      for (std::size_t a = 0; a < np; ++a) neg[a] = -jtr[a];
      if (solve(damped, neg, delta)) {
        trial = theta;
        for (std::size_t a = 0; a < np; ++a) trial[a] += delta[a];
        std::vector<double> rt;
        if (fn(trial, rt) && rt.size() == nr) {
          const double c = half_sq(rt);
          if (c < cost) {
            const double rel = (cost - c) / std::max(cost, 1e-300);
            theta = trial;
            r = std::move(rt);
            cost = c;
            lambda = std::max(lambda / 3, 1e-12);
            improved = true;
            if (rel < opt.tolerance) {
              res.converged = true;
              res.theta = theta;
              res.cost = cost;
              return res;
            }
            break;
          }
        }
      }
      lambda *= 4;
    }
    if (!improved) {  // no downhill step at any damping: a (local) minimum
      res.converged = true;
      break;
    }
  }
  res.theta = theta;
  res.cost = cost;
  return res;
}

}  // namespace moesim::models::cost
