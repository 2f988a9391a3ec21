#!/usr/bin/env python3
"""Checks that a `moesim run --json` report has the keys CONVENTIONS.md promises for its mode."""
import json
import sys

COMMON = ["moesim_version", "scenario", "seed", "workload.mode"]
ROUTING = ["model.params_total", "model.params_active", "routing.drop_fraction", "routing.padded_fraction",
           "routing.max_over_mean_load"]
STEP = ROUTING + ["step_time_us", "tokens_per_s", "mfu", "memory.peak_bytes_per_gpu",
                  "memory.capacity_bytes_per_gpu", "memory.fits", "breakdown_us.compute", "breakdown_us.dispatch",
                  "breakdown_us.combine", "breakdown_us.other_collectives", "breakdown_us.exposed_communication",
                  "breakdown_us.idle", "layers"]
COLLECTIVE = ["step_time_us", "collective.time_us", "collective.algbw_GBps", "collective.busbw_GBps"]


def get(d, path):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def main(path):
    r = json.load(open(path))
    mode = get(r, "workload.mode")
    need = COMMON + {"routing": ROUTING, "collective": COLLECTIVE}.get(mode, STEP)
    missing = [k for k in need if get(r, k) is None]
    if missing:
        print(f"check_report: {path}: missing {missing}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1])
