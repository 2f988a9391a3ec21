#pragma once
/// \file
/// Checks of a parsed scenario that need more than its own text: the files it names (the
/// routing trace and the kernel cost profile are read and validated here, so `moesim validate`,
/// sweeps and plans report a bad one as a located configuration error before anything runs,
/// instead of a run failing later) and values bounded by the hardware (an all-to-all kernel
/// cannot take more SMs than the GPU has).

#include "config/reader.hpp"
#include "engine/scenario.hpp"

namespace moesim::engine {

/// Reports problems into `root`'s diagnostics (located at the scenario key that names the file,
/// or inside the file); adds non-fatal notes to `s.warnings`. Traces are validated once per
/// (file version, model, top_k) in a process, so the points of a sweep share one read.
void check_scenario_inputs(Scenario& s, const config::Node& root);

}  // namespace moesim::engine
