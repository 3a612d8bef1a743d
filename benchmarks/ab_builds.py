"""The class-balancing forward op of two git revisions, timed against each other in one process.

    python benchmarks/ab_builds.py BASE [NEW] [--shapes 256x1010,256x100,256x10] [--threads 1,2] [--blocks 7]

Across processes this 2-core machine's speed moves by tens of percent, so two builds timed one after the other
cannot settle a 5% question. This script builds the op schemas (csrc/ops.cpp) and the CPU kernels
(csrc/cpu/class_balancing.cpp) of each revision (NEW defaults to the working tree) into a library of its own,
under a namespace of its own (the source's `cbgan_ext` renamed by the preprocessor), loads both and alternates
their calls, the order swapped every round. Each block's ratio is median(BASE) / median(NEW); above 1 means NEW
is faster. It also says whether the two builds' outputs are equal bit for bit. glibc's heap-trim and mmap
thresholds are pinned, as in the suites, so that neither build pays page faults the other does not.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from _timing import ratio

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ("csrc/ops.cpp", "csrc/cpu/class_balancing.cpp")


def checkout(rev, into):
    """csrc/ of a revision ("." for the working tree) under `into`."""
    if rev == ".":
        subprocess.run(["cp", "-r", os.path.join(ROOT, "csrc"), into], check=True)
        return
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "csrc"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)


def build(rev, name, workdir):
    from torch.utils import cpp_extension
    src = os.path.join(workdir, name)
    os.makedirs(src)
    checkout(rev, src)
    cpp_extension.load(name=name, sources=[os.path.join(src, s) for s in SOURCES],
                       extra_cflags=["-O3", "-fopenmp", "-Wno-psabi", f"-Dcbgan_ext={name}"],
                       extra_ldflags=["-fopenmp"], build_directory=src, is_python_module=False, verbose=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="git revision to compare against")
    ap.add_argument("new", nargs="?", default=".", help="git revision (default: the working tree)")
    ap.add_argument("--shapes", default="256x1010,256x100,256x10", help="comma-separated BxK")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=300, help="calls of each build per block")
    args = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error("--shapes must be like 256x1010,256x10 and --threads like 1,2")
    if any(len(s) != 2 or min(s) < 1 for s in shapes) or min(threads) < 1 or args.blocks < 1 or args.rounds < 1:
        ap.error("shapes, thread counts, --blocks and --rounds must be positive")
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") is None:  # glibc reads these at start-up: re-run with them set
        env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="1000000000", MALLOC_MMAP_THRESHOLD_="100000000")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        build(args.base, "cbab_base", tmp)
        build(args.new, "cbab_new", tmp)
    ops = [torch.ops.cbab_base.class_balancing_loss_forward, torch.ops.cbab_new.class_balancing_loss_forward]
    print(f"base {args.base}, new {args.new}: median(base) / median(new) per block, {args.rounds} calls each")
    for B, K in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, K, generator=g)
        w = torch.rand(K, generator=g) + 0.1
        same = [torch.equal(a, b) for a, b in zip(ops[0](x, w), ops[1](x, w))]
        for n in threads:
            torch.set_num_threads(n)
            for _ in range(20):
                ops[0](x, w), ops[1](x, w)
            blocks = [ratio(lambda: ops[1](x, w), lambda: ops[0](x, w), args.rounds) for _ in range(args.blocks)]
            ratios = [r for r, _ in blocks]
            new_us = statistics.median(t for _, t in blocks) * 1e6
            print(f"B={B} K={K} threads={n}: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}), "
                  f"new {new_us:.0f} us; equal (loss, counts, probs, mean): {same}", flush=True)


if __name__ == "__main__":
    main()
