"""Where a class-balancing step's time goes on the CPU, in a plain process (malloc not pinned).

    python benchmarks/cb_breakdown.py [--threads 1,2] [--K 100,1010]

Per row: the forward op alone, the backward op alone (a new gradient buffer), the accumulation into x.grad,
and a whole step (`class_balancing_loss(x, w).backward()` into an existing x.grad) timed per phase, fused and
eager, medians of 400 steps; and the minor page faults a whole step costs (getrusage), which show whether the
op's [B, K] buffers are reused or come fresh from the kernel. B = 256, float32.
"""
import argparse
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the source tree (an editable install) comes first

import torch  # noqa: E402

from cbgan_ext import ops, reference  # noqa: E402


def median_us(fn, n=400):
    for _ in range(20):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def phases(impl, x, w, n=400):
    tf, tb = [], []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(n + 20):
        t0 = time.perf_counter()
        loss = impl(x, w)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i == 19:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if i >= 20:
            tf.append(t1 - t0)
            tb.append(t2 - t1)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n
    return statistics.median(tf) * 1e6, statistics.median(tb) * 1e6, faults


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--K", default="100,1010")
    args = ap.parse_args()
    for th in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(th)
        for K in (int(k) for k in args.K.split(",")):
            g = torch.Generator().manual_seed(K)
            x = torch.randn(256, K, generator=g, requires_grad=True)
            w = torch.rand(K, generator=g) + 0.1
            xd = x.detach()
            _, _, p, m = torch.ops.cbgan_ext.class_balancing_loss_forward(xd, w)
            one = torch.ones(())
            fwd = median_us(lambda: torch.ops.cbgan_ext.class_balancing_loss_forward(xd, w))
            bwd = median_us(lambda: torch.ops.cbgan_ext._class_balancing_loss_backward(one, p, w, m))
            grad = torch.ops.cbgan_ext._class_balancing_loss_backward(one, p, w, m)
            x.grad = torch.zeros_like(x)
            acc = median_us(lambda: x.grad.add_(grad))

            f_f, f_b, f_pf = phases(ops.class_balancing_loss, x, w)
            e_f, e_b, e_pf = phases(reference.class_balancing_loss, x, w)
            print(f"threads {th} K {K}: ops alone: forward {fwd:.0f} us, backward {bwd:.0f} us, "
                  f"x.grad += {acc:.0f} us | step fused {f_f:.0f} + {f_b:.0f} = {f_f + f_b:.0f} us "
                  f"({f_pf:.1f} faults), eager {e_f:.0f} + {e_b:.0f} "
                  f"= {e_f + e_b:.0f} us ({e_pf:.1f} faults): {(e_f + e_b) / (f_f + f_b):.2f}x", flush=True)


if __name__ == "__main__":
    main()
