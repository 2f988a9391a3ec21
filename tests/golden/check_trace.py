#!/usr/bin/env python3
"""Checks a moesim Chrome trace: required fields, per-track nesting of slices, paired flow ids,
named processes and threads. Exit 1 with a message on the first class of violation found."""
import json
import sys
from collections import defaultdict


def fail(msg):
    print(f"check_trace: {msg}", file=sys.stderr)
    sys.exit(1)


def main(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc.get("traceEvents")
    if not isinstance(events, list) or not events:
        fail("no traceEvents")
    named_pids, named_tids = set(), set()
    slices = defaultdict(list)
    flows = defaultdict(lambda: [0, 0])
    used_pids, used_tids = set(), set()
    for i, e in enumerate(events):
        for key in ("name", "ph", "pid"):
            if key not in e:
                fail(f"event {i} lacks '{key}': {e}")
        ph = e["ph"]
        if ph == "M":
            if e["name"] == "process_name":
                named_pids.add(e["pid"])
            if e["name"] == "thread_name":
                named_tids.add((e["pid"], e["tid"]))
            continue
        if "ts" not in e or not isinstance(e["ts"], (int, float)):
            fail(f"event {i} lacks a numeric ts: {e}")
        used_pids.add(e["pid"])
        if ph == "X":
            if "tid" not in e or "dur" not in e or e["dur"] < 0:
                fail(f"slice {i} lacks tid or has a bad dur: {e}")
            slices[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e["name"]))
            used_tids.add((e["pid"], e["tid"]))
        elif ph in ("s", "f"):
            if "id" not in e or "tid" not in e:
                fail(f"flow event {i} lacks id or tid: {e}")
            flows[e["id"]][0 if ph == "s" else 1] += 1
            if ph == "f" and e.get("bp") != "e":
                fail(f"flow end {i} must bind to its enclosing slice (bp: e)")
        elif ph == "C":
            if not isinstance(e.get("args"), dict) or not e["args"]:
                fail(f"counter {i} lacks args")
        else:
            fail(f"event {i} has unexpected ph '{ph}'")
    missing = used_pids - named_pids
    if missing:
        fail(f"processes without process_name: {sorted(missing)[:5]}")
    missing = used_tids - named_tids
    if missing:
        fail(f"tracks without thread_name: {sorted(missing)[:5]}")
    # Slices on one track must nest. Timestamps are exact decimals of picoseconds, but ts + dur in
    # double precision can be off by a few 1e-9 us at 1e7 us: allow half a picosecond.
    eps = 5e-7
    for track, ss in slices.items():
        ss.sort(key=lambda x: (x[0], -x[1]))
        stack = []
        for start, end, name in ss:
            while stack and stack[-1][1] <= start + eps:
                stack.pop()
            if stack and end > stack[-1][1] + eps:
                fail(f"track {track}: '{name}' [{start}, {end}] overlaps '{stack[-1][2]}' without nesting")
            stack.append((start, end, name))
    for fid, (s, f) in flows.items():
        if s != 1 or f != 1:
            fail(f"flow id {fid} has {s} start(s) and {f} end(s)")
    n_slices = sum(len(v) for v in slices.values())
    print(f"check_trace: ok: {n_slices} slices on {len(slices)} tracks, {len(flows)} flows, {len(used_pids)} processes")


if __name__ == "__main__":
    main(sys.argv[1])
