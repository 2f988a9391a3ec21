#pragma once
/// \file
/// Levenberg-Marquardt least squares for a handful of parameters.
///
/// Why our own: the problems are tiny (<= 6 parameters, a few thousand residuals), a numeric
/// Jacobian is cheap, and a dependency-free solver keeps the fit deterministic and portable.
/// Positivity and bounds are handled by the caller's parameter transform (fit log-parameters).

#include <functional>
#include <vector>

namespace moesim::models::cost {

struct LmOptions {
  int max_iterations = 200;
  double initial_lambda = 1e-3;
  double tolerance = 1e-12;  ///< stop when the relative cost decrease is below this
  double step = 1e-6;        ///< central-difference step in parameter space
};

struct LmResult {
  std::vector<double> theta;
  double cost = 0;  ///< 0.5 * sum r_i^2 at theta
  int iterations = 0;
  bool converged = false;
};

/// Residual function: fills r (size fixed by the first call) for parameters theta. Must be
/// deterministic and return finite values for every theta it is given (return false if not).
using ResidualFn = std::function<bool(const std::vector<double>& theta, std::vector<double>& r)>;

/// Minimises 0.5 * |r(theta)|^2 from theta0. Throws std::invalid_argument if r(theta0) fails.
LmResult levenberg_marquardt(const ResidualFn& fn, std::vector<double> theta0, const LmOptions& options = {});

}  // namespace moesim::models::cost
