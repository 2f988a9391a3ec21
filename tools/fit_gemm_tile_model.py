#!/usr/bin/env python3
"""Global fit of the default GEMM tile model's constants (models/README.md, "GEMM tile model").

Reads ONLY the points of validation/published/deepgemm.yaml marked `subset: calibration` and
fits, once and for all shapes, the six constants of models/cost/cost_model.cpp:
  eta (tensor efficiency), mem_eff (HBM efficiency), K-block latency floor (cycles), per-tile
  prologue/epilogue (cycles), device-side fixed cost (s), blend exponent p.
The objective is the sum of squared log errors of the kernel time. Held-out points are printed
separately; they take no part in the fit. Pure Python (pyyaml only), deterministic (fixed seed).

This is a replica of the C++ model (choose_gemm_tile + gemm_terms) for the H800 catalog entry;
`moesim fidelity --only 'deepgemm*'` checks the C++ side with the constants pasted in.
Usage: tools/fit_gemm_tile_model.py [validation/published/deepgemm.yaml]
"""
import math
import random
import sys

import yaml

SMS, CLK, F_FP8, HBM = 132, 1.83e9, 1979e12, 3.35e12  # hardware/catalog/gpus.yaml, h800
F_SM_CLK = F_FP8 / SMS / CLK  # 8192 FP8 FLOP per SM cycle


def cdiv(a, b):
    return (a + b - 1) // b


def choose(rows, n, contiguous):
    """DeepGEMM get_best_configs (deep_gemm/jit_kernels/gemm.py @a9967bc), block sizes only."""
    bms = (128,) if contiguous else (64, 128, 256)
    bns = tuple(range(16, 129, 8)) + (144, 160)
    best = None
    for bm in bms:
        mt = sum(cdiv(m, bm) for m in rows)
        for bn in bns:
            if bm > 128 and bn > 128:
                continue
            tiles = mt * cdiv(n, bn)
            waves = cdiv(tiles, SMS)
            util = tiles % SMS or SMS
            if best is None or waves < best[3]:
                take = True
            elif waves == best[3]:
                take = util > best[4]
                if util == best[4]:
                    take = (bm == best[0] and bn < best[1]) or (bn == best[1] and bm < best[0]) or \
                        (bm != best[0] and bn > best[1])
            else:
                take = False
            if take:
                best = (bm, bn, tiles, waves, util)
    return best


def predict(pt, x):
    eta, mem, lat, ovh, t0, p = x
    bm, bn, tiles, waves, _ = choose(pt['rows'], pt['n'], pt['contiguous'])
    kb = cdiv(pt['k'], 128)
    tile = ovh + max(2 * bm * bn * pt['k'] / (eta * F_SM_CLK), kb * lat)
    tc = waves * tile / CLK
    tm = pt['bytes'] / (mem * HBM * min(1.0, min(tiles, SMS) / (0.5 * SMS)))
    hi = max(tc, tm)
    return t0 + hi * ((tc / hi) ** p + (tm / hi) ** p) ** (1 / p)


def load(path):
    pts = []
    for q in yaml.safe_load(open(path))['points']:
        k = q['kernel']
        g = k.get('groups', 1)
        rows = [k['m']] * g
        t = 2 * k['m'] * k['n'] * k['k'] * g / (q['published']['value'] * 1e12)
        pts.append(dict(id=q['id'], cal=q['subset'] == 'calibration', op=k['op'], rows=rows, n=k['n'], k=k['k'],
                        contiguous=k['op'] == 'grouped_gemm' and k.get('layout') != 'masked',
                        bytes=g * (k['m'] * k['k'] + k['n'] * k['k']) + g * 2 * k['m'] * k['n'], t=t))
    return pts


def unpack(z):
    sig = lambda v: 1 / (1 + math.exp(-v))
    return [sig(z[0]), sig(z[1]), math.exp(z[2]), math.exp(z[3]), math.exp(z[4]) * 1e-6, 1 + math.exp(z[5])]


def nelder_mead(f, x0, step=0.5, iters=4000):
    n = len(x0)
    s = [list(x0)] + [[x0[j] + (step if j == i else 0) for j in range(n)] for i in range(n)]
    v = [f(p) for p in s]
    for _ in range(iters):
        o = sorted(range(n + 1), key=lambda i: v[i])
        s, v = [s[i] for i in o], [v[i] for i in o]
        c = [sum(s[i][j] for i in range(n)) / n for j in range(n)]
        r = [c[j] + (c[j] - s[-1][j]) for j in range(n)]
        fr = f(r)
        if fr < v[0]:
            e = [c[j] + 2 * (c[j] - s[-1][j]) for j in range(n)]
            fe = f(e)
            s[-1], v[-1] = (e, fe) if fe < fr else (r, fr)
        elif fr < v[-2]:
            s[-1], v[-1] = r, fr
        else:
            k = [c[j] + 0.5 * (s[-1][j] - c[j]) for j in range(n)]
            fk = f(k)
            if fk < v[-1]:
                s[-1], v[-1] = k, fk
            else:
                for i in range(1, n + 1):
                    s[i] = [s[0][j] + 0.5 * (s[i][j] - s[0][j]) for j in range(n)]
                    v[i] = f(s[i])
    return s[0], v[0]


def main():
    pts = load(sys.argv[1] if len(sys.argv) > 1 else 'validation/published/deepgemm.yaml')
    cal = [p for p in pts if p['cal']]
    obj = lambda z: sum(math.log(predict(p, unpack(z)) / p['t']) ** 2 for p in cal)
    rng = random.Random(1)
    z0 = [math.log(0.8 / 0.2), math.log(0.85 / 0.15), math.log(300), math.log(2000), math.log(1.5), math.log(2)]
    best = None
    for _ in range(6):
        z, v = nelder_mead(obj, [a + rng.uniform(-0.5, 0.5) for a in z0])
        if best is None or v < best[1]:
            best = (z, v)
    x = unpack(best[0])
    print(f'fit on {len(cal)} calibration points: eta {x[0]:.3f}  mem_eff {x[1]:.3f}  kblock_latency {x[2]:.0f} cyc  '
          f'tile_overhead {x[3]:.0f} cyc  device_fixed {x[4] * 1e6:.2f} us  p {x[5]:.2f}')
    for subset in (True, False):
        for op in ('gemm', 'grouped_gemm'):
            e = [predict(p, x) / p['t'] - 1 for p in pts if p['cal'] == subset and p['op'] == op]
            if e:
                print(f"{'calibration' if subset else 'held-out':12s} {op:13s} n={len(e):2d} "
                      f"MAPE {100 * sum(map(abs, e)) / len(e):5.1f}%  worst {100 * max(e, key=abs):+6.1f}% (time)")


if __name__ == '__main__':
    main()
