"""Fused op against its eager reference, forward + backward, timed call by call in a plain process.

    python benchmarks/interleaved.py [--threads 1,2] [--repeats 3] [--out FILE]

The pytest-benchmark suites time each implementation in its own block of rounds, with glibc's malloc
thresholds pinned (conftest.py). A training process pins nothing and interleaves everything, so this script
leaves the allocator alone and alternates fused and eager calls (the order swapped every round), so that
a noisy neighbour slows both alike. Each ratio is median(eager) / median(fused) over one block of rounds;
a block is repeated --repeats times and the script reports every block's ratio, their median and range.
Shapes: those of issue 15's goals (B = 256).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the source tree (an editable install) comes first

import torch  # noqa: E402

from cbgan_ext import ops, reference  # noqa: E402
from _timing import ratio  # noqa: E402

B = 256


def cases():
    g = torch.Generator().manual_seed(0)
    for K in (10, 100, 1010):
        x = torch.randn(B, K, generator=g).requires_grad_()
        w = torch.rand(K, generator=g) + 0.1

        def step(f, x=x, w=w):
            return lambda: f(x, w).backward()
        yield f"class_balancing_loss K={K}", step(ops.class_balancing_loss), \
            step(reference.class_balancing_loss), 400
    for L, K in ((512, 10), (1024, 100), (1024, 1010)):
        h = torch.randn(B, L, generator=g).requires_grad_()
        E = torch.randn(K, L, generator=g).requires_grad_()
        y = torch.softmax(torch.randn(B, K, generator=g), 1).requires_grad_()

        def step(f, h=h, E=E, y=y):
            return lambda: f(h, E, y).sum().backward()
        yield f"soft_label_projection L={L} K={K}", step(ops.soft_label_projection), \
            step(reference.soft_label_projection), 200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeats", type=int, default=3, help="blocks of rounds per row")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<machine>-interleaved.json)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.repeats < 1 or any(t < 1 for t in threads):
        ap.error("--repeats and --threads must be positive")
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        for name, fused, eager, rounds in cases():
            for _ in range(5):
                fused(), eager()
            blocks = [ratio(fused, eager, rounds) for _ in range(args.repeats)]
            rs = [r for r, _ in blocks]
            row = {"op": name, "threads": n, "rounds": rounds, "ratios": rs, "median": statistics.median(rs),
                   "min": min(rs), "max": max(rs), "fused_median_s": statistics.median(t for _, t in blocks)}
            rows.append(row)
            print(f"{name:<40} threads={n}  eager/fused {row['median']:.2f}x "
                  f"({row['min']:.2f}-{row['max']:.2f}, {args.repeats} blocks)  "
                  f"fused {row['fused_median_s'] * 1e6:.0f} us",
                  flush=True)
    name = platform.node() or "machine"
    out = args.out or os.path.join(HERE, "results", f"{name}-interleaved.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                   "torch": torch.__version__, "malloc": "not pinned", "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
