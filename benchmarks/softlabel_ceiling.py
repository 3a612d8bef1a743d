"""How much of a Softlabel-GAN iteration the fused ops can save at most, in a plain process.

    python benchmarks/softlabel_ceiling.py [--width 1.0] [--rounds 2] [--threads N] [--out FILE]

The plain-PyTorch iteration of bench_softlabel_iteration.py (torch's spectral norm, the reference
DiffAugment, the einsum-free projection) is timed interleaved against the same iteration with the work
the package fuses taken out: spectral norm removed (the weights used as they are) and DiffAugment
skipped. No implementation of those ops can beat the stripped iteration, so plain / stripped bounds
the speed-up any fusion of them gives (the projection is kept in both: a few microseconds).
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_softlabel_iteration as b  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plain, stripped = b.plain_step(args.width), b.plain_step(args.width, strip=True)
    plain(), stripped()  # warm-up
    tp, ts = [], []
    for i in range(args.rounds):
        for fn, out in ((plain, tp), (stripped, ts)) if i % 2 == 0 else ((stripped, ts), (plain, tp)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    row = {"width": args.width, "threads": torch.get_num_threads(), "rounds": args.rounds, "plain_s": tp,
           "stripped_s": ts, "ceiling": statistics.median(tp) / statistics.median(ts)}
    print(f"width {args.width} threads {row['threads']}: plain {statistics.median(tp):.2f} s, without SN and "
          f"DiffAugment {statistics.median(ts):.2f} s: no fusion of them can exceed {row['ceiling']:.3f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
