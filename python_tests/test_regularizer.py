import math

import pytest
import torch

from cbgan_ext import CBRegularizer


def _logits_for(labels, K):
    """Logits whose argmax is `labels` and whose softmax is far from one-hot (a smooth loss)."""
    x = torch.randn(len(labels), K) * 0.1
    x[torch.arange(len(labels)), labels] += 2.0
    return x


def test_paper_cycle_matches_hand_computed_sequence():
    K = 4
    reg = CBRegularizer(K, lam=2.0, alpha=0.5, update_every=3, weighting="paper", init_count=10.0)
    N_hat = torch.full((K,), 10.0, dtype=torch.float64)
    c = torch.zeros(K, dtype=torch.float64)
    batches = [[0, 0, 1], [2, 0, 0, 0], [3], [1, 1], [0, 2, 2, 2, 3], [0], [1, 2]]
    for i, labels in enumerate(batches, start=1):
        logits = _logits_for(torch.tensor(labels), K)
        out = reg(logits)
        # the loss uses the statistics before this step's update
        N = N_hat / N_hat.sum()
        p = torch.softmax(logits.double(), 1).mean(0)
        expect = 2.0 / K * (p * torch.log(p) / N).sum()
        assert math.isclose(out.item(), expect.item(), rel_tol=1e-5)
        c += torch.bincount(torch.tensor(labels), minlength=K).double()
        reg.step()
        if i % 3 == 0:
            N_hat = 0.5 * N_hat + 1.0 * c
            c.zero_()
        assert torch.allclose(reg.effective_count, N_hat)
        assert torch.allclose(reg.counts, c)
        assert int(reg.num_steps) == i
    assert torch.allclose(reg.class_distribution(), N_hat / N_hat.sum())


def test_official_weighting_convex_combination_and_clamp():
    K = 3
    reg = CBRegularizer(K, lam=0.5, alpha=0.25, beta=0.25, update_every=1, weighting="official")
    assert torch.allclose(reg.effective_count, torch.full((K,), 50.0, dtype=torch.float64))
    assert torch.allclose(reg.counts, torch.full((K,), 512.0, dtype=torch.float64))
    logits = _logits_for(torch.tensor([0, 0, 1]), K)
    out = reg(logits)
    w = torch.ones(K)  # equal N̂: K·(1/50)/(K/50) = 1
    p = torch.softmax(logits.double(), 1).mean(0)
    assert math.isclose(out.item(), 0.5 * (w * p * torch.log(p)).sum().item(), rel_tol=1e-5)
    reg.step()
    N_hat = 0.75 * 50 + 0.25 * (512 + torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(reg.effective_count, N_hat)
    assert torch.allclose(reg.counts, torch.zeros(K, dtype=torch.float64))  # the prior is spent
    inv = 1.0 / N_hat
    assert torch.allclose(reg.class_weights(), K * inv / inv.sum())
    # many empty cycles decay N̂ towards 0; the released code clamps it at 1
    for _ in range(200):
        reg.step()
    assert torch.allclose(reg.effective_count, torch.ones(K, dtype=torch.float64))


def test_rare_classes_get_larger_weight_and_gradient_pushes_towards_them():
    K = 5
    reg = CBRegularizer(K, lam=1.0, update_every=1)
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 8 + [3] * 2)
    reg(_logits_for(labels, K))
    reg.step()
    w = reg.class_weights()
    assert w[4] > w[3] > w[2] > w[1] > w[0]
    x = torch.zeros(16, K, requires_grad=True)
    reg(x).backward()
    # gradient descent raises the logits of the classes the generator under-produces
    assert x.grad[:, 4].mean() < x.grad[:, 0].mean()


def test_large_K_small_batch_update_every_step():
    K, B = 1010, 256
    reg = CBRegularizer(K, lam=0.5, alpha=0.005, beta=0.005, update_every=1)
    for _ in range(3):
        x = torch.randn(B, K, requires_grad=True)
        loss = reg(x)
        loss.backward()
        reg.step()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert int(reg.num_steps) == 3
    assert torch.all(reg.effective_count > 0)


def test_state_dict_round_trip():
    K = 6
    a = CBRegularizer(K, lam=1.0, update_every=2)
    for _ in range(5):
        a(torch.randn(32, K))
        a.step()
    sd = a.state_dict()
    assert set(sd) == {"effective_count", "counts", "num_steps", "_extra_state"}
    assert sd["_extra_state"] == dict(num_classes=K, lam=1.0, alpha=0.5, beta=1.0, update_every=2, weighting="paper",
                                      start=0)
    b = CBRegularizer(K, lam=1.0, update_every=2)
    b.load_state_dict(sd)
    for name in ("effective_count", "counts", "num_steps"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    x = torch.randn(16, K)
    assert torch.equal(a(x), b(x))
    a.step()
    b.step()
    assert torch.equal(a.effective_count, b.effective_count)


def test_state_dict_refuses_a_module_of_other_settings_and_loads_older_states():
    sd = CBRegularizer(4, lam=1.0, update_every=2).state_dict()
    for other in (dict(lam=2.0), dict(update_every=3), dict(weighting="official"), dict(alpha=0.25)):
        kw = {"lam": 1.0, "update_every": 2, **other}
        with pytest.raises(ValueError, match=f"other settings \\(.*{next(iter(other))}: "):
            CBRegularizer(4, **kw).load_state_dict(sd)
    older = {k: v for k, v in sd.items() if k != "_extra_state"}  # saved before the settings were in it
    b = CBRegularizer(4, lam=1.0, update_every=2)
    b.load_state_dict(older)
    assert torch.equal(b.counts, sd["counts"])


def test_eval_mode_does_not_count():
    reg = CBRegularizer(3, lam=1.0).eval()
    reg(torch.randn(8, 3))
    assert torch.count_nonzero(reg.counts) == 0


def test_sample_labels_inverse_frequency():
    K = 4
    reg = CBRegularizer(K, lam=1.0, update_every=1, alpha=1.0)
    reg.counts.copy_(torch.tensor([800.0, 100.0, 50.0, 50.0], dtype=torch.float64))
    reg.step()
    g = torch.Generator().manual_seed(1)
    y = reg.sample_labels(20000, generator=g)
    freq = torch.bincount(y, minlength=K).double() / len(y)
    expect = torch.tensor([1 / 800, 1 / 100, 1 / 50, 1 / 50], dtype=torch.float64)
    expect /= expect.sum()
    assert torch.allclose(freq, expect, atol=0.02)
    assert torch.equal(y, reg.sample_labels(20000, generator=torch.Generator().manual_seed(1)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="weighting"):
        CBRegularizer(3, 1.0, weighting="nope")
    with pytest.raises(ValueError, match="alpha"):
        CBRegularizer(3, 1.0, alpha=1.5)
    with pytest.raises(ValueError, match="update_every"):
        CBRegularizer(3, 1.0, update_every=0)
    for kw, name in ((dict(update_every=2.5), "update_every must be an integer"),
                     (dict(init_count=float("inf")), "init_count must be a finite number > 0"),
                     (dict(init_count=0.0), "init_count"), (dict(alpha=float("nan")), "alpha"),
                     (dict(beta=-1.0), "beta"), (dict(lam=True), "lam must be a finite number")):
        args = {"lam": 1.0, **kw}
        with pytest.raises(ValueError, match=name):
            CBRegularizer(3, args.pop("lam"), **args)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        CBRegularizer(2.5, 1.0)
    with pytest.raises(ValueError, match=r"CBRegularizer: expected classifier logits \[B, 3\]"):
        CBRegularizer(3, 1.0)(torch.randn(4, 5))
