"""Distributed training (torch.distributed, gloo, 2 processes on CPU): the CB regularizer's statistics are
global, the ranks of a GAN run stay identical where they must, a 2-rank run resumes exactly, and torchrun runs
`train` and `train-classifier`, including a rank killed mid-run and restarted.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from cbgan_ext import CBRegularizer

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2


def _spawn(fn, init, *args):
    """Run fn(rank, WORLD, init, *args) in WORLD processes; ``init`` is a fresh file for the rendezvous."""
    assert not os.path.exists(init)
    mp.spawn(fn, args=(WORLD, str(init), *args), nprocs=WORLD, join=True)


def _init(rank, world, init):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)


# ---- the CB regularizer on 2 ranks equals one process on the concatenated batch -------------------------

def _regularizer_steps(model, regs, batches, rank=None, world=1):
    out = []
    for x in batches:
        if rank is not None:
            x = x.chunk(world)[rank]
        rec = {}
        for name, (net, reg) in regs.items():
            net.zero_grad(set_to_none=True)
            loss = reg(net(x))
            loss.backward()
            m = model[name]
            rec[name] = dict(loss=loss.detach().clone(), w=m.weight.grad.clone(), b=m.bias.grad.clone(),
                             n_hat=reg.effective_count.clone(), counts=reg.counts.clone())
            reg.step()
        out.append(rec)
    return out


def _make(K, weighting, distributed=True):
    torch.manual_seed(0)
    m = torch.nn.Linear(6, K).double()
    with torch.no_grad():
        m.weight.mul_(3.0)  # logits spread enough that argmax counts differ between classes
    return m, CBRegularizer(K, lam=4.0, update_every=2, weighting=weighting, distributed=distributed).double()


def _batches(K, B=12, n=7):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(B, 6, generator=g, dtype=torch.float64) for _ in range(n)]


def _reg_worker(rank, world, init, K, out):
    _init(rank, world, init)
    models, regs = {}, {}
    for weighting in ("paper", "official"):
        m, reg = _make(K, weighting)
        models[weighting], regs[weighting] = m, (DistributedDataParallel(m), reg)
    m, reg = _make(K, "paper", distributed=False)  # each rank's statistics alone: must NOT match
    models["local"], regs["local"] = m, (DistributedDataParallel(m), reg)
    steps = _regularizer_steps(models, regs, _batches(K), rank, world)
    dead = _dead_class_logits(K).chunk(world)[rank].clone().requires_grad_()
    loss = CBRegularizer(K, lam=4.0).double()(dead)
    loss.backward()
    torch.save(dict(steps=steps, dead=(loss.detach(), dead.grad)), os.path.join(out, f"reg{rank}.pt"))
    dist.destroy_process_group()


def _dead_class_logits(K):
    z = torch.randn(12, K, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z[:, 0] = -1e4  # softmax exactly 0 for class 0 over the whole batch: p̂_0 = 0
    return z


def test_cb_regularizer_on_two_ranks_equals_one_process_on_the_concatenated_batch(tmp_path):
    K = 5
    _spawn(_reg_worker, tmp_path / "rdzv", K, str(tmp_path))
    models, regs = {}, {}
    for weighting in ("paper", "official"):
        m, reg = _make(K, weighting)
        models[weighting], regs[weighting] = m, (m, reg)
    m, reg = _make(K, "paper")
    models["local"], regs["local"] = m, (m, reg)
    single = _regularizer_steps(models, regs, _batches(K))
    saved = [torch.load(tmp_path / f"reg{r}.pt") for r in range(WORLD)]
    ranks = [d["steps"] for d in saved]
    for step, one in enumerate(single):
        for weighting in ("paper", "official"):
            for r in range(WORLD):
                got, want = ranks[r][step][weighting], one[weighting]
                for key in ("loss", "w", "b", "n_hat", "counts"):
                    torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12,
                                               msg=f"step {step} {weighting} rank {r}: {key}")
    # the N̂ updates happened and moved away from the start, so the comparison above covered them
    assert not torch.equal(single[-1]["paper"]["n_hat"], single[0]["paper"]["n_hat"])
    # a class with p̂ = 0: 0·log 0 = 0 with a finite gradient, as the fused one-process op gives; without
    # DDP's averaging each rank's gradient is W times its rows' share (DDP divides by W)
    z = _dead_class_logits(K).requires_grad_()
    loss = CBRegularizer(K, lam=4.0).double()(z)
    loss.backward()
    for r in range(WORLD):
        got_loss, got_grad = saved[r]["dead"]
        assert torch.isfinite(got_grad).all()
        torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_grad / WORLD, z.grad.chunk(WORLD)[r], rtol=1e-10, atol=1e-12)
    # local statistics give other gradients: the test can tell the two apart
    assert not torch.allclose(ranks[0][0]["local"]["w"], single[0]["local"]["w"], rtol=1e-6, atol=1e-9)


# ---- the GAN trainer on 2 ranks ----------------------------------------------------------------------------

def _digits():
    pytest.importorskip("sklearn")
    from cbgan_ext.data import get_dataset
    return get_dataset("digits", "train", image_size=32, imbalance_ratio=10.0, seed=0)


def _tiny_classifier(K):
    from cbgan_ext.models.classifier import CifarResNet
    torch.manual_seed(3)
    return CifarResNet(K, 1, 8, 0.25)


def _gan_worker(rank, world, init, out, steps, tag):
    _init(rank, world, init)
    from cbgan_ext.train.gan import GANTrainer
    data = _digits()
    try:
        GANTrainer(data, out, method="cbgan", classifier=_tiny_classifier(10), progress=False, arch="sndcgan",
                   width=0.125, steps=steps, batch_size=7, cycle=2, lam=5.0)
    except ValueError as e:
        bad_batch = str(e)
    else:
        bad_batch = None
    t = GANTrainer(data, out, method="cbgan", classifier=_tiny_classifier(10), progress=False, arch="sndcgan",
                   width=0.125, steps=steps, batch_size=8, cycle=2, lam=5.0, ckpt_every=3, ema_start=2,
                   ema_decay=0.9, sample_every=0)
    t.run()
    torch.save(dict(G=t.G.state_dict(), D=t.D.state_dict(), ema=t.ema.model.state_dict(),
                    n_hat=t.reg.effective_count.clone(), counts=t.reg.counts.clone(), bad_batch=bad_batch,
                    noise=t.noise_rng.gen.get_state()),
               os.path.join(out, f"{tag}-rank{rank}.pt"))
    dist.destroy_process_group()


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.usefixtures("one_thread")
def test_gan_ranks_stay_identical_and_a_two_rank_run_resumes_exactly(tmp_path):
    from cbgan_ext.train import checkpoint as ckpt
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    _spawn(_gan_worker, tmp_path / "rdzv-a", whole, 6, "end")
    r0, r1 = (torch.load(os.path.join(whole, f"end-rank{r}.pt")) for r in range(WORLD))
    assert "does not divide over 2 ranks" in r0["bad_batch"]
    # weights, spectral-norm u/v (D's buffers), EMA weights and the regularizer's statistics: one value.
    # G's BatchNorm running statistics are each rank's own between DDP's broadcasts from rank 0 (as in any
    # DDP model without SyncBatchNorm); the checkpoint holds rank 0's.
    assert _state_equal(r0["D"], r1["D"])
    for key in ("G", "ema"):
        params = [k for k in r0[key] if "running" not in k and "num_batches" not in k]
        assert len(params) > 4 and all(torch.equal(r0[key][k], r1[key][k]) for k in params), key
    assert torch.equal(r0["n_hat"], r1["n_hat"]) and torch.equal(r0["counts"], r1["counts"])
    assert not torch.equal(r0["noise"], r1["noise"])  # each rank has its own noise stream
    state = ckpt.load(os.path.join(whole, "checkpoint.pt"))
    assert len(state["ranks"]) == WORLD
    # 3 steps, stop, then resume to 6 on 2 ranks: the same weights as 6 steps at once
    _spawn(_gan_worker, tmp_path / "rdzv-b", split, 3, "half")
    _spawn(_gan_worker, tmp_path / "rdzv-c", split, 6, "end")
    s0 = torch.load(os.path.join(split, "end-rank0.pt"))
    for key in ("G", "D", "ema"):
        assert _state_equal(s0[key], r0[key]), key
    assert torch.equal(s0["n_hat"], r0["n_hat"])
    # one process cannot resume a 2-rank checkpoint: its data and noise streams are per rank
    from cbgan_ext.train.gan import GANTrainer
    from cbgan_ext.train.loop import ConfigMismatchError
    t = GANTrainer(_digits(), whole, method="cbgan", classifier=_tiny_classifier(10), progress=False,
                   arch="sndcgan", width=0.125, steps=8, batch_size=8, cycle=2, lam=5.0, ckpt_every=3, ema_start=2,
                   ema_decay=0.9, sample_every=0)
    with pytest.raises(ConfigMismatchError, match="written by 2 rank"):
        t.run()


def _fixed_batches(trainer, rank, world, steps=2):
    """Make the trainer draw step s's global batch (fixed images, labels, latents) and take its rank's slice."""
    g = torch.Generator().manual_seed(11)
    B = trainer.batch_size
    batches = [(torch.rand(B, 1, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (B,), generator=g),
                torch.randn(2, B, trainer.z_dim, generator=g)) for _ in range(steps)]
    state = {"step": 0, "noise": 0}
    share = slice(rank * B // world, (rank + 1) * B // world)

    def real_batch():
        x, y, _ = batches[state["step"]]
        return x[share], y[share], torch.arange(B)[share]

    def noise(n):
        z = batches[state["step"]][2][state["noise"]][share]
        state["noise"] += 1
        return z

    def step(i):
        state["step"], state["noise"] = i, 0
        return trainer.train_step(i)
    trainer._real_batch, trainer._noise = real_batch, noise
    return step


def _same_batch_worker(rank, world, init, out):
    if world > 1:
        _init(rank, world, init)
    from cbgan_ext.train.gan import GANTrainer
    torch.manual_seed(0)
    t = GANTrainer(_digits(), out + f"-{rank}", method="cbgan", classifier=_tiny_classifier(10), progress=False,
                   arch="sndcgan", width=0.125, steps=2, batch_size=8, cycle=1, lam=5.0, sample_every=0)
    # SGD, not Adam: Adam's first steps hardly depend on the gradient's scale, SGD's show it
    t.optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.05) for k, m in t.modules.items()}
    step = _fixed_batches(t, rank, world)
    t.D.train()
    t.G.eval()  # BatchNorm from running statistics: each sample on its own, so the math allows the split
    g0 = {k: v.clone() for k, v in t.G.state_dict().items()}
    for i in range(2):
        step(i)
    if rank == 0:
        torch.save(dict(G=t.G.state_dict(), D=t.D.state_dict(), n_hat=t.reg.effective_count.clone(), G0=g0),
                   out + f"-w{world}.pt")
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.usefixtures("one_thread")
def test_cbgan_steps_on_two_ranks_equal_one_process_on_the_same_global_batch(tmp_path):
    pytest.importorskip("sklearn")
    out = str(tmp_path / "run")
    _same_batch_worker(0, 1, None, out)
    _spawn(_same_batch_worker, tmp_path / "rdzv", out)
    one, two = torch.load(out + "-w1.pt"), torch.load(out + "-w2.pt")
    for name in ("G", "D"):
        for k in one[name]:
            torch.testing.assert_close(two[name][k], one[name][k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    assert torch.equal(two["n_hat"], one["n_hat"])
    # the steps moved the weights (so the comparison is not of two initialisations)
    assert not torch.allclose(one["G"]["linear.weight"], one["G0"]["linear.weight"], atol=1e-4)


# ---- BAGAN's adversarial stage on 2 ranks -------------------------------------------------------------------

BAGAN_SMALL = dict(method="bagan", width=0.125, batch_size=8, z_dim=8, ae_steps=3, sample_every=0, ckpt_every=2,
                   progress=False)


def _bagan_data():
    from cbgan_ext.data import ImageDataset
    g = torch.Generator().manual_seed(0)
    counts = (40, 40, 40, 6)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 1, 16, 16), generator=g, dtype=torch.uint8)
    return ImageDataset(images, labels, len(counts),
                        config=dict(name="synthetic", profile="bagan", minority_class=3, drop_fraction=0.9))


def _bagan_worker(rank, world, init, out, steps, tag):
    _init(rank, world, init)
    from cbgan_ext.train.gan import GANTrainer
    t = GANTrainer(_bagan_data(), out, steps=steps, **BAGAN_SMALL)
    t.run()
    torch.save(dict(G=t.G.state_dict(), D=t.D.state_dict()), os.path.join(out, f"{tag}-rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_thread")
def test_bagan_adversarial_stage_on_two_ranks_stays_identical_and_resumes_exactly(tmp_path):
    from cbgan_ext.train.gan import GANTrainer
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    stage0 = {}
    for out in (whole, split):  # the autoencoder and the class Gaussians: one process, as the trainer requires
        stage0[out] = GANTrainer(_bagan_data(), out, steps=0, **BAGAN_SMALL)
        stage0[out].run()
    decoder = {k: v.clone() for k, v in stage0[whole].G.state_dict().items()}
    _spawn(_bagan_worker, tmp_path / "rdzv-a", whole, 4, "end")
    r0, r1 = (torch.load(os.path.join(whole, f"end-rank{r}.pt")) for r in range(WORLD))
    assert _state_equal(r0["G"], r1["G"]) and _state_equal(r0["D"], r1["D"])  # no BatchNorm: every tensor one value
    assert torch.equal(r0["G"]["class_chol"], decoder["class_chol"])  # the Gaussians are the one process's fit
    assert any(not torch.equal(r0["G"][k], decoder[k]) for k in decoder if k.endswith("weight"))  # G moved
    # 2 steps, stop, then resume to 4 on 2 ranks: the same weights as 4 steps at once
    _spawn(_bagan_worker, tmp_path / "rdzv-b", split, 2, "half")
    _spawn(_bagan_worker, tmp_path / "rdzv-c", split, 4, "end")
    s0 = torch.load(os.path.join(split, "end-rank0.pt"))
    assert _state_equal(s0["G"], r0["G"]) and _state_equal(s0["D"], r0["D"])


# ---- torchrun --------------------------------------------------------------------------------------------

def _torchrun(args, cwd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", CBGAN_EXT_DIST_TIMEOUT="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           *kw.pop("pre", []), "-m", "cbgan_ext.cli", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _worker_pids(parent):
    """PIDs of the processes under ``parent`` whose environment says RANK=1."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and b"RANK=1" in env:
            found.append(int(pid))
    return found


TRAIN = ["train", "--dataset", "digits", "--imbalance", "10", "--image-size", "32", "--method", "gan",
         "--width", "0.125", "--batch-size", "16", "--steps", "300", "--ckpt-every", "10", "--sample-every", "0",
         "--no-progress", "--threads", "1"]


# batch 16: ⌈16/10⌉ = 2 fakes a D step, which divide over 2 ranks (8 would give 1, refused by name)
BAGAN_CLI = ["train", "--dataset", "digits", "--imbalance", "1", "--image-size", "32", "--method", "bagan",
             "--profile", "bagan", "--minority-class", "0", "--drop-fraction", "0.9", "--width", "0.125",
             "--batch-size", "16", "--ae-steps", "2", "--sample-every", "0", "--no-progress", "--threads", "1",
             "--out", "run"]


def test_torchrun_bagan_after_its_one_process_autoencoder_stage(tmp_path):
    pytest.importorskip("sklearn")
    from cbgan_ext.train import checkpoint as ckpt
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "cbgan_ext.cli", *BAGAN_CLI, "--steps", "0"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    p = _torchrun(BAGAN_CLI + ["--steps", "3", "--ckpt-every", "1"], tmp_path)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    state = ckpt.load(str(tmp_path / "run" / "checkpoint.pt"))
    assert state["step"] == 3 and len(state["ranks"]) == WORLD


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank-1 worker through /proc")
def test_torchrun_train_survives_a_killed_rank_and_resumes_exactly(tmp_path):
    pytest.importorskip("sklearn")
    from cbgan_ext.train import checkpoint as ckpt
    clean = _torchrun(TRAIN + ["--out", "clean"], tmp_path)
    out, _ = clean.communicate(timeout=600)
    assert clean.returncode == 0, out
    killed = _torchrun(TRAIN + ["--out", "killed"], tmp_path, pre=["--max-restarts=1"])
    ckpt_path = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    victims = []
    while time.time() < deadline and not victims and killed.poll() is None:
        if ckpt_path.exists():
            victims = _worker_pids(killed.pid)
        time.sleep(0.02)
    assert victims, "no rank-1 worker found after the first checkpoint"
    os.kill(victims[0], signal.SIGKILL)
    out, _ = killed.communicate(timeout=600)
    assert killed.returncode == 0, out
    log = (tmp_path / "killed" / "metrics.jsonl").read_text()
    assert '"event": "resumed"' in log, "the run finished before the kill; nothing was tested"
    a, b = ckpt.load(str(tmp_path / "clean" / "checkpoint.pt")), ckpt.load(str(ckpt_path))
    assert a["step"] == b["step"] == 300
    for name in ("G", "D"):
        assert _state_equal(a["modules"][name], b["modules"][name]), name
    assert _state_equal(a["ema"], b["ema"])
    # rank 0 alone writes the log: one record per logged step
    steps = [line for line in log.splitlines() if '"event": "train"' in line]
    assert len(steps) == len({s.split('"step": ')[1].split(",")[0] for s in steps}) == 300 // 50


def test_torchrun_train_classifier(tmp_path):
    pytest.importorskip("sklearn")
    from cbgan_ext.models.classifier import load_classifier
    p = _torchrun(["train-classifier", "--dataset", "digits", "--imbalance", "10", "--image-size", "32", "--depth",
                   "8", "--width", "0.25", "--epochs", "2", "--batch-size", "63", "--out", "clf.pt", "--no-progress",
                   "--threads", "1"], tmp_path)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert out.count("balanced test accuracy") == 1, out  # printed by rank 0 only
    model = load_classifier(str(tmp_path / "clf.pt"))
    info = model.checkpoint_info
    assert info["finished"] and len(info["ranks"]) == WORLD
    assert info["seen"] == 0 and len(info["history"]) == 2 and info["balanced_accuracy"] is not None
    assert all(0 <= h["train_accuracy"] <= 1 for h in info["history"])


def test_a_torchrun_restart_resumes_only_its_own_classifier_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    pytest.importorskip("sklearn")
    from cbgan_ext import cli
    out = str(tmp_path / "clf.pt")
    argv = ["train-classifier", "--dataset", "digits", "--imbalance", "10", "--image-size", "32", "--depth", "8",
            "--width", "0.25", "--epochs", "0.3", "--out", out, "--no-progress"]
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    assert cli.main(argv) == 0  # attempt 0 of job-a writes it
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    capsys.readouterr()
    assert cli.main(argv[:-3] + ["--epochs", "0.6", "--out", out, "--no-progress"]) == 0  # job-a's restart resumes
    assert "resumed" in capsys.readouterr().err
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")  # another job's restart: the file is not its own
    assert cli.main(argv) == 1
    assert "exists" in capsys.readouterr().err
