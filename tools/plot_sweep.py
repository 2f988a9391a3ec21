#!/usr/bin/env python3
"""Plots a moesim sweep's results.csv with matplotlib (Debian: python3-matplotlib).

    python3 tools/plot_sweep.py results/NAME/results.csv                 # a standard set of plots
    moesim plot results/NAME/results.csv line --x routing.capacity_factor --by routing.alpha --metric drop_fraction
    moesim plot results.csv heatmap --x routing.capacity_factor --y routing.alpha --metric step_time_us
    moesim plot results.csv breakdown --x model.experts
    moesim plot results.csv pareto --cost cluster.nodes --time step_time_us

Kinds:
  line       METRIC against one swept column, one line per value of a second (--by)
  heatmap    METRIC over two swept columns
  breakdown  stacked time breakdown (compute/dispatch/combine/other comm/idle, us) per value of --x
  pareto     the Pareto front of two columns to minimise (cost vs time), every point shown
  auto       (default) a line plot per main metric against the first axis, by the second; a
             heatmap over the first two axes; a breakdown when the CSV has one

Rows with status=error are skipped. Repeats and any swept column not on a plot's axes are
averaged (the title says so). Swept columns come from manifest.json next to the CSV, else from
column names that are YAML paths (contain a '.'). PNGs go to -o DIR (default: the CSV's
folder); their paths are printed on stdout.
"""
import argparse
import csv
import json
import math
import os
import sys

MAIN_METRICS = ["step_time_us", "tokens_per_s", "mfu", "drop_fraction", "padded_fraction", "max_over_mean_load",
                "peak_mem_GiB", "busbw_GBps"]
# Stacked breakdown: a partition of the mean per-GPU step time (compute + exposed communication +
# idle = step time; idle split into waiting for EP/TP peers, pipeline bubbles and the rest), so the
# bar height is the step time. Communication that overlaps compute is not stacked (it is not time
# added to the step); dispatch_us/combine_us are plotted with `line` if wanted.
BREAKDOWN = [("compute_us", "compute"), ("exposed_comm_us", "exposed comm"),
             ("ep_wait_us", "waiting for EP peers"), ("pp_bubble_us", "pipeline bubbles"), ("idle_us", "other idle")]
FIXED = {"run_index", "seed", "status", "repeat", "error"}


def number(text):
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


class Results:
    def __init__(self, path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            self.columns = reader.fieldnames or []
            self.rows = [r for r in reader if r.get("status", "ok") == "ok"]
        self.groups = self._swept(path)  # axes; a linked axis is one group of several paths
        self.axes = [p for g in self.groups for p in g]
        self.metrics = [c for c in self.columns if c not in FIXED and c not in self.axes]

    def _swept(self, path):
        manifest = os.path.join(os.path.dirname(os.path.abspath(path)), "manifest.json")
        if os.path.exists(manifest):
            try:
                with open(manifest) as f:
                    m = json.load(f)
                groups = [[p for p in a["paths"] if p in self.columns] for a in m["sweep"]["axes"]]
                return [g for g in groups if g]
            except (KeyError, ValueError, TypeError):
                pass
        return [[c] for c in self.columns if "." in c and c not in FIXED]

    def values(self, column):
        """Distinct values of a column in first-seen order, sorted numerically when all are numbers."""
        seen = []
        for r in self.rows:
            if r[column] not in seen:
                seen.append(r[column])
        if seen and all(number(v) is not None for v in seen):
            seen.sort(key=number)
        return seen

    def mean(self, metric, **where):
        xs = [number(r[metric]) for r in self.rows if all(r[k] == v for k, v in where.items())]
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    def averaged_over(self, shown):
        rest = [g[0] for g in self.groups if not set(g) & set(shown) and len(self.values(g[0])) > 1]
        if "repeat" in self.columns:
            rest.append("repeats")
        return rest


def need(res, column, what):
    if column not in res.columns:
        sys.exit(f"plot_sweep: {what} '{column}' is not a column of the CSV (columns: {', '.join(res.columns)})")


def positions(res, column):
    """x positions and tick labels: numbers where the values are numbers, else evenly spaced."""
    vals = res.values(column)
    if all(number(v) is not None for v in vals):
        return vals, [number(v) for v in vals], None
    return vals, list(range(len(vals))), vals


def note(res, shown):
    rest = res.averaged_over(shown)
    return f" (mean over {', '.join(rest)})" if rest else ""


def save(fig, out_dir, name):
    path = os.path.join(out_dir, name.replace("/", "_") + ".png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(path)


def plot_line(plt, res, out_dir, x, metric, by=None):
    need(res, x, "--x")
    need(res, metric, "--metric")
    vals, xs, ticks = positions(res, x)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    groups = res.values(by) if by else [None]
    for g in groups:
        ys = [res.mean(metric, **({x: v, by: g} if by else {x: v})) for v in vals]
        pts = [(a, b) for a, b in zip(xs, ys) if b is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{by}={g}" if by else None)
    if ticks:
        ax.set_xticks(xs, ticks)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {x}{note(res, [x, by] if by else [x])}", fontsize=9)
    ax.grid(alpha=0.3)
    if by:
        ax.legend(fontsize=8)
    save(fig, out_dir, f"{metric}_vs_{x}" + (f"_by_{by}" if by else ""))
    plt.close(fig)


def plot_heatmap(plt, res, out_dir, x, y, metric):
    for c, w in ((x, "--x"), (y, "--y"), (metric, "--metric")):
        need(res, c, w)
    xv, yv = res.values(x), res.values(y)
    grid = [[res.mean(metric, **{x: a, y: b}) for a in xv] for b in yv]
    data = [[float("nan") if v is None else v for v in row] for row in grid]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    im = ax.imshow(data, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(xv)), xv)
    ax.set_yticks(range(len(yv)), yv)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v is not None and len(xv) * len(yv) <= 100:
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(f"{metric} over {x} x {y}{note(res, [x, y])}", fontsize=9)
    save(fig, out_dir, f"{metric}_heatmap_{x}_{y}")
    plt.close(fig)


def plot_breakdown(plt, res, out_dir, x):
    need(res, x, "--x")
    parts = [(c, label) for c, label in BREAKDOWN if c in res.columns]
    if not parts:
        sys.exit("plot_sweep: breakdown needs the *_us breakdown columns of a train/prefill/decode sweep")
    vals = res.values(x)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    bottom = [0.0] * len(vals)
    split = [c for c in ("ep_wait_us", "pp_bubble_us") if c in res.columns]
    for c, label in parts:
        ys = [res.mean(c, **{x: v}) or 0.0 for v in vals]
        if c == "idle_us":  # what the split columns do not already show
            for sc in split:
                ys = [max(0.0, y - (res.mean(sc, **{x: v}) or 0.0)) for y, v in zip(ys, vals)]
            if not split:
                label = "idle"
        ax.bar(range(len(vals)), [y / 1000 for y in ys], bottom=[b / 1000 for b in bottom], label=label)
        bottom = [b + y for b, y in zip(bottom, ys)]
    ax.set_xticks(range(len(vals)), vals)
    ax.set_xlabel(x)
    ax.set_ylabel("time per GPU (ms, mean over GPUs)")
    ax.set_title(f"step time breakdown vs {x}{note(res, [x])}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save(fig, out_dir, f"breakdown_vs_{x}")
    plt.close(fig)


def plot_pareto(plt, res, out_dir, cost, time, label=None):
    need(res, cost, "--cost")
    need(res, time, "--time")
    pts = []
    for r in res.rows:
        a, b = number(r[cost]), number(r[time])
        if a is not None and b is not None:
            pts.append((a, b, r.get(label, "") if label else ""))
    if not pts:
        sys.exit(f"plot_sweep: no rows with numbers in both {cost} and {time}")
    front, best = [], math.inf
    for p in sorted(pts, key=lambda p: (p[0], p[1])):
        if p[1] < best:
            front.append(p)
            best = p[1]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, color="0.7", label="all points")
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="C3", marker="o", label="Pareto front")
    if label:
        for p in front:
            ax.annotate(str(p[2]), (p[0], p[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(cost)
    ax.set_ylabel(time)
    ax.set_title(f"Pareto front: {time} vs {cost} (lower is better)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, out_dir, f"pareto_{time}_vs_{cost}")
    plt.close(fig)


def plot_auto(plt, res, out_dir):
    varying = [g[0] for g in res.groups if len(res.values(g[0])) > 1]  # one path per axis
    if not varying:
        sys.exit("plot_sweep: no swept column varies; nothing to plot")
    x = varying[0]
    by = varying[1] if len(varying) > 1 else None
    for m in MAIN_METRICS:
        if m in res.metrics and any(number(r[m]) is not None for r in res.rows):
            plot_line(plt, res, out_dir, x, m, by)
    if by:
        for m in ("step_time_us", "drop_fraction"):
            if m in res.metrics and any(number(r[m]) is not None for r in res.rows):
                plot_heatmap(plt, res, out_dir, x, by, m)
    if any(c in res.columns for c, _ in BREAKDOWN):
        plot_breakdown(plt, res, out_dir, x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="a sweep's results.csv")
    ap.add_argument("kind", nargs="?", default="auto", choices=["auto", "line", "heatmap", "breakdown", "pareto"])
    ap.add_argument("-o", "--output", help="folder for the PNGs (default: the CSV's folder)")
    ap.add_argument("--x", help="swept column on the x axis")
    ap.add_argument("--y", help="second swept column (heatmap)")
    ap.add_argument("--by", help="one line per value of this column (line)")
    ap.add_argument("--metric", help="metric column to plot (line, heatmap)")
    ap.add_argument("--cost", help="column to minimise on the x axis (pareto)")
    ap.add_argument("--time", default="step_time_us", help="column to minimise on the y axis (pareto)")
    ap.add_argument("--label", help="column to annotate Pareto points with")
    a = ap.parse_args()

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_sweep: matplotlib is not installed (Debian: apt-get install python3-matplotlib)")
    res = Results(a.csv)
    if not res.rows:
        sys.exit(f"plot_sweep: {a.csv} has no successful runs to plot")
    out_dir = a.output or os.path.dirname(os.path.abspath(a.csv))
    os.makedirs(out_dir, exist_ok=True)
    if a.kind == "auto":
        plot_auto(plt, res, out_dir)
    elif a.kind == "line":
        if not a.x or not a.metric:
            sys.exit("plot_sweep: line needs --x and --metric (and optionally --by)")
        plot_line(plt, res, out_dir, a.x, a.metric, a.by)
    elif a.kind == "heatmap":
        if not a.x or not a.y or not a.metric:
            sys.exit("plot_sweep: heatmap needs --x, --y and --metric")
        plot_heatmap(plt, res, out_dir, a.x, a.y, a.metric)
    elif a.kind == "breakdown":
        if not a.x:
            sys.exit("plot_sweep: breakdown needs --x")
        plot_breakdown(plt, res, out_dir, a.x)
    else:
        if not a.cost:
            sys.exit("plot_sweep: pareto needs --cost (and --time, default step_time_us)")
        plot_pareto(plt, res, out_dir, a.cost, a.time, a.label)


if __name__ == "__main__":
    main()
