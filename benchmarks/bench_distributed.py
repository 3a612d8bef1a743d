"""CBGAN training-step throughput with torch.distributed on this machine: 2 ranks x 1 thread (gloo, DDP)
against 1 process x 2 threads, the same global batch (64), SNDCGAN width 0.25 on 1x32x32 images, a ResNet-8
classifier in the loop.

Each configuration runs in fresh processes (spawned, file rendezvous) that time every step after a warm-up;
the two configurations alternate for several rounds so machine noise falls on both. The result is in the
row's extra_info: the median step time of each, their ratio, and the bytes each rank sends per step, counted
from the tensors the step reduces or broadcasts (DDP's gradient all-reduce of G and of D, the buffers DDP
sends from rank 0 before G's first forward and D's two, and the CB regularizer's 2K + 1 numbers).
"""
import os
import statistics
import tempfile

import torch
import torch.multiprocessing as mp

from _data import RandomImages

STEPS, WARMUP, ROUNDS, BATCH, K = 12, 3, 3, 64, 10


def _worker(rank, world, threads, init, out):
    import time
    import torch.distributed as dist
    from cbgan_ext.models import CifarResNet
    from cbgan_ext.train import GANTrainer
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)
    clf = CifarResNet(K, 1, depth=8, width=0.5).eval().requires_grad_(False)
    t = GANTrainer(RandomImages(), tempfile.mkdtemp(), method="cbgan", classifier=clf, width=0.25, batch_size=BATCH,
                   cycle=50, weighting="official", lam=5.0, progress=False, seed=0)
    times = []
    for step in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        t.train_step(step)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        def nbytes(tensors):
            return sum(x.numel() * x.element_size() for x in tensors)
        grads = nbytes(t.G.parameters()) + nbytes(t.D.parameters())
        # DDP sends buffers at a forward unless the previous forward ran without grad: G once (the D step's
        # no-grad forward), D twice (real and fake in the D step)
        buffers = nbytes(t.G.buffers()) + 2 * nbytes(t.D.buffers())
        torch.save(dict(times=times[WARMUP:], grad_bytes=grads, buffer_bytes=buffers,
                        reg_bytes=(2 * K + 1) * 4), out)
    if world > 1:
        dist.destroy_process_group()


def _run(world, threads, folder, tag):
    init, out = os.path.join(folder, f"rdzv-{tag}"), os.path.join(folder, f"{tag}.pt")
    mp.spawn(_worker, args=(world, threads, init, out), nprocs=world, join=True)
    return torch.load(out)


def test_two_ranks_vs_one_process(benchmark):
    benchmark.group = "cbgan train step, distributed"
    benchmark.extra_info.update(op="cbgan_train_step_ddp", impl="2x1 vs 1x2", device="cpu", shape=f"B={BATCH}")
    folder = tempfile.mkdtemp()
    results = {"1x2": [], "2x1": []}

    def rounds():
        for r in range(ROUNDS):
            order = [(1, 2, "1x2"), (2, 1, "2x1")]
            for world, threads, name in order if r % 2 == 0 else order[::-1]:
                res = _run(world, threads, folder, f"{name}-{len(results[name])}")
                results[name].append(res)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    one = statistics.median(t for res in results["1x2"] for t in res["times"])
    two = statistics.median(t for res in results["2x1"] for t in res["times"])
    res = results["2x1"][0]
    benchmark.extra_info.update(
        one_process_two_threads_median_s=one, two_ranks_one_thread_median_s=two, speedup_2x1_over_1x2=one / two,
        bytes_per_step_gradients=res["grad_bytes"], bytes_per_step_buffers=res["buffer_bytes"],
        bytes_per_step_cb_regularizer=res["reg_bytes"])
    print(f"\nmedian step: 1 process x 2 threads {one * 1e3:.1f} ms, 2 ranks x 1 thread {two * 1e3:.1f} ms "
          f"({one / two:.2f}x); per step and rank: gradients {res['grad_bytes']} B, buffers {res['buffer_bytes']} B, "
          f"CB regularizer {res['reg_bytes']} B")
