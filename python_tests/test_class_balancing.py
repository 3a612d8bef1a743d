import pytest
import torch

from cbgan_ext import ops, reference
from conftest import DEVICES, at_one_and_many_threads

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Half and bfloat16 logits: the reference gets the same rounded values (in float64) and the kernel computes in
# float32, so the loss differs only by float32 accumulation (~1e-7 relative per term, sums of at most
# B·K = 256·2000 terms in blocks: well under 1e-5). The gradient g_bj = (p_bj/B)·(a_j − Σ_k p_bk a_k),
# a_k = w_k(log p̄_k + 1), comes out in the input dtype with its probabilities in it: each of its two terms
# carries the dtype's unit roundoff u (2^-8 bfloat16, 2^-11 float16), so the error is within
# u·(T_bj + |g_bj|), T_bj = (p_bj/B)·(|a_j| + Σ_k p_bk |a_k|) (the terms' size, not their difference), plus
# float16's subnormal spacing 2^-24 for tiny gradients. Measured: at most 0.96 of that over 150 draws; the
# tests allow 2x.
LOSS_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
ROUNDOFF = {torch.float64: 0.0, torch.float32: 0.0, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
SUBNORMAL = {torch.float16: 2.0 ** -24}


def _eq7(logits, w):
    """Eq. 7 written independently of reference.py, in float64, with 0·log 0 = 0."""
    p = torch.softmax(logits.double(), dim=1).mean(0)
    return (w.double() * torch.special.xlogy(p, p)).sum()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,K", [(1, 1), (7, 3), (64, 10), (40, 16), (19, 17), (256, 100), (256, 1010), (33, 2000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_forward_and_counts_match_reference(device, B, K, dtype):
    logits = (3 * torch.randn(B, K, dtype=torch.float64)).to(device, dtype)
    w = torch.rand(K, device=device) + 0.1
    loss, counts = ops.class_balancing_loss_with_counts(logits, w)
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expect = _eq7(logits, w)
    rtol = LOSS_RTOL[dtype]
    assert torch.allclose(loss.double().cpu(), expect.cpu(), rtol=rtol, atol=rtol * w.max().item())
    assert torch.equal(counts.cpu(), reference.argmax_counts(logits.float()).cpu())
    assert int(counts.sum()) == B


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,K", [(5, 4), (64, 10), (19, 17), (256, 1010)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_backward_matches_reference(device, B, K, dtype):
    x = torch.randn(B, K, dtype=torch.float64, device=device)
    w = torch.rand(K, device=device) + 0.1
    xf = x.to(dtype).requires_grad_()
    g_fused, = torch.autograd.grad(ops.class_balancing_loss(xf, w), xf)
    xr = x.to(dtype).double().requires_grad_()
    g_ref, = torch.autograd.grad(_eq7(xr, w), xr)
    assert g_fused.dtype == dtype
    with torch.no_grad():
        p = torch.softmax(xr, dim=1)
        a = (w.double() * (torch.log(p.mean(0)) + 1)).abs()
        terms = p / B * (a[None, :] + (p * a[None, :]).sum(1, keepdim=True))
    bound = (2 * ROUNDOFF[dtype] * (terms + g_ref.abs()) + SUBNORMAL.get(dtype, 0.0)
             + LOSS_RTOL[dtype] * g_ref.abs().max() + 1e-12)
    assert ((g_fused.double() - g_ref).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_transposed_inputs(device):
    base = torch.randn(40, 64, device=device)
    w = torch.rand(20, device=device) + 0.5
    for logits in (base[::2, ::3][:, :20], base.t()[:20, :].t(), base[:, 1::3][:, :20]):
        assert not logits.is_contiguous()
        x1 = logits.clone().requires_grad_()
        x2 = logits.contiguous().clone().requires_grad_()
        l1, l2 = ops.class_balancing_loss(x1, w), reference.class_balancing_loss(x2, w)
        assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-6)
        g1, = torch.autograd.grad(l1, x1)
        g2, = torch.autograd.grad(l2, x2)
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [17, 63, 64, 100, 1010])
def test_probs_match_softmax_over_the_whole_exp_range(device, K):
    # logits spread over hundreds: exps from 1 down past float32's smallest normal (the CPU kernel's shorter
    # exp from 64 classes must be as accurate as the other, and give 0, not garbage, where it underflows)
    x = 40 * torch.randn(64, K, dtype=torch.float64)
    w = torch.rand(K) + 0.1
    _, _, probs, mean_probs = torch.ops.cbgan_ext.class_balancing_loss_forward(x.float().to(device), w.to(device))
    ref = torch.softmax(x.float().double(), 1)
    probs = probs.cpu().double()
    normal = ref > 1e-37
    # float32 rounds the shifted logit x - max, whose error exp multiplies by |x - max|
    shift = (x.float().double() - x.float().double().max(1, keepdim=True).values).abs()
    assert (((probs - ref).abs() / ref)[normal] <= 1e-6 + 1.2e-7 * shift[normal]).all()
    assert (probs[~normal] <= 2e-37).all() and (probs >= 0).all()
    torch.testing.assert_close(mean_probs.cpu().double(), ref.mean(0), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [40, 100, 1010, 5000])
def test_counts_take_the_first_of_tied_maxima(device, K):
    # ties between columns that different SIMD lanes and accumulators see: torch.argmax takes the first
    g = torch.Generator().manual_seed(K)
    x = torch.randn(48, K, generator=g)
    cols = torch.randint(0, K, (48, 3), generator=g).sort(1).values
    for b in range(48):
        x[b, cols[b]] = 9.0
    w = torch.rand(K) + 0.1
    _, counts = ops.class_balancing_loss_with_counts(x.to(device), w.to(device))
    assert torch.equal(counts.cpu(), torch.bincount(cols[:, 0], minlength=K))
    assert torch.equal(counts.cpu(), reference.argmax_counts(x))
    # logits of a few values: each row's maximum repeats across lanes and vectors, and -0.0 and 0.0 tie
    xq = torch.randint(-3, 1, (48, K), generator=g).float()
    xq[(torch.rand(48, K, generator=g) < 0.5) & (xq == 0)] = -0.0
    _, counts = ops.class_balancing_loss_with_counts(xq.to(device), w.to(device))
    assert torch.equal(counts.cpu(), reference.argmax_counts(xq))


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_logits_stay_finite(device):
    x = -torch.rand(32, 10, device=device) * 1e4
    x[:, 3] = 1e4  # every other class underflows to p̂ = 0
    x.requires_grad_()
    w = torch.rand(10, device=device) + 0.5
    loss = ops.class_balancing_loss(x, w)
    g, = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    # all mass on class 3: p̂ = e_3, so the loss is w_3·1·log 1 = 0
    assert abs(loss.item()) < 1e-6
    x2 = torch.full((8, 5), -1e4, device=device)
    x2[:, 0] = 1e4
    x2.requires_grad_()
    g2, = torch.autograd.grad(ops.class_balancing_loss(x2, torch.ones(5, device=device)), x2)
    assert torch.isfinite(g2).all()


def test_gradcheck_float64():
    for B, K in [(4, 3), (9, 12)]:
        x = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
        w = torch.rand(K, dtype=torch.float64) + 0.1
        assert torch.autograd.gradcheck(lambda t: ops.class_balancing_loss(t, w), (x,))


@pytest.mark.needs_cuda
def test_gradcheck_float64_cuda():
    x = torch.randn(6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.rand(5, dtype=torch.float64, device="cuda") + 0.1
    assert torch.autograd.gradcheck(lambda t: ops.class_balancing_loss(t, w), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for B, K in [(8, 10), (3, 1010)]:
        x = torch.randn(B, K, device=device, requires_grad=True)
        w = torch.rand(K, device=device)
        torch.library.opcheck(torch.ops.cbgan_ext.class_balancing_loss_forward.default, (x, w))
        p = torch.softmax(x.detach(), 1)
        torch.library.opcheck(torch.ops.cbgan_ext._class_balancing_loss_backward.default,
                              (torch.tensor(1.3, device=device), p, w, p.mean(0)))


def test_torch_compile_fullgraph():
    x = torch.randn(64, 10, requires_grad=True)
    w = torch.rand(10)

    def f(t):
        return ops.class_balancing_loss(t * 2.0, w) * 3.0

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    l1 = cf(x)
    g1, = torch.autograd.grad(l1, x)
    l2 = f(x)
    g2, = torch.autograd.grad(l2, x)
    assert torch.allclose(l1, l2) and torch.allclose(g1, g2)


def test_autocast_cpu():
    x = torch.randn(16, 10, requires_grad=True)
    lin = torch.nn.Linear(10, 10)
    w = torch.rand(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        loss = ops.class_balancing_loss(logits, w)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_op(device):
    w = torch.rand(10, device=device)
    bad = [
        (torch.randn(4, 10, 1, device=device), w, "2-D"),
        (torch.randn(10, device=device), w, "2-D"),
        (torch.randn(4, 9, device=device), w, "class_weights must be"),
        (torch.randn(0, 10, device=device), w, "empty batch"),
        (torch.randint(0, 5, (4, 10), device=device), w, "float16, bfloat16, float32 or float64"),
        (torch.randn(4, 10, device=device), torch.randint(0, 5, (10,), device=device), "float16"),
    ]
    for logits, weights, msg in bad:
        with pytest.raises(RuntimeError, match=f"class_balancing_loss: .*{msg}"):
            ops.class_balancing_loss(logits, weights)
    with pytest.raises(TypeError, match="class_balancing_loss"):
        ops.class_balancing_loss([[1.0, 2.0]], w)


@pytest.mark.needs_cuda
def test_mixed_devices_raise():
    with pytest.raises(RuntimeError, match="class_balancing_loss: .*same device"):
        ops.class_balancing_loss(torch.randn(4, 10, device="cuda"), torch.rand(10))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cpu_cuda_parity(dtype):
    x = torch.randn(300, 37, dtype=dtype)
    w = torch.rand(37)
    lc, cc = ops.class_balancing_loss_with_counts(x, w)
    lg, cg = ops.class_balancing_loss_with_counts(x.cuda(), w.cuda())
    assert torch.allclose(lc, lg.cpu(), rtol=TOL[dtype], atol=TOL[dtype])
    assert torch.equal(cc, cg.cpu())


def test_deterministic_across_thread_counts():
    x = torch.randn(1000, 50)
    w = torch.rand(50)
    a, b = at_one_and_many_threads(lambda: ops.class_balancing_loss(x, w))
    assert torch.equal(a, b)


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,K", [(7, 1), (64, 3), (37, 10), (64, 16)])
def test_small_k_path_is_bit_identical_to_the_row_path(B, K, dtype, nan):
    # Up to 16 classes the CPU kernel puts one row per SIMD lane; padded with -inf columns past 16, the same rows
    # take the row-wise loop, and the two must agree bit for bit (recorded runs stay reproducible).
    x = (3 * torch.randn(B, K)).to(dtype)
    if nan:
        x[1, K // 2] = float("nan")
    w = torch.rand(K) + 0.1
    pad = 33 - K
    xp = torch.cat([x, torch.full((B, pad), float("-inf"), dtype=dtype)], 1)
    wp = torch.cat([w, torch.ones(pad)])
    op = torch.ops.cbgan_ext.class_balancing_loss_forward
    loss, counts, probs, mean_probs = op(x, w)
    loss_p, counts_p, probs_p, mean_probs_p = op(xp, wp)
    assert torch.equal(probs.nan_to_num(-1.0), probs_p[:, :K].nan_to_num(-1.0))
    assert torch.equal(counts, counts_p[:K]) and int(counts_p[K:].sum()) == 0
    if nan:  # NaN in, NaN out; the row's argmax is the NaN's column, as torch.argmax
        assert probs[1].isnan().all() and not probs[0].isnan().any()
        assert mean_probs.isnan().all() and loss.isnan()
        assert int(counts[K // 2]) >= 1
    else:
        assert torch.equal(mean_probs, mean_probs_p[:K]) and torch.equal(loss, loss_p)


def test_forward_mode_ad_is_a_loud_error():
    import torch.autograd.forward_ad as fwAD
    w = torch.rand(10)
    with fwAD.dual_level():
        x = fwAD.make_dual(torch.randn(8, 10), torch.randn(8, 10))
        with pytest.raises(RuntimeError, match="class_balancing_loss: forward-mode AD is not supported"):
            ops.class_balancing_loss(x, w)


def test_class_weights_are_constants():
    x = torch.randn(8, 10, requires_grad=True)
    w = (torch.rand(10) + 0.1).requires_grad_()
    loss = ops.class_balancing_loss(x, w)
    assert loss.requires_grad and loss.grad_fn.name() == "ClassBalancingLossBackward"
    loss.backward()
    assert w.grad is None and x.grad is not None
    # only the weights require grad: the loss still has a history, and no gradient reaches them
    loss = ops.class_balancing_loss(x.detach(), w)
    assert loss.requires_grad
    loss.backward()
    assert w.grad is None


def test_retain_graph_and_a_second_backward():
    x = torch.randn(32, 10, requires_grad=True)
    w = torch.rand(10) + 0.1
    loss = ops.class_balancing_loss(x, w)
    g1, = torch.autograd.grad(loss, x, retain_graph=True)
    g2, = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, x)


@pytest.mark.parametrize("K", [100, 1010])
def test_a_training_loop_reuses_one_buffer_and_stays_exact(K):
    """Step after step the CPU op hands out the same probs buffer (no fresh [B, K] buffer a step) and the
    backward writes the gradient into it, with the reference's gradients every step."""
    g = torch.Generator().manual_seed(K)
    w = torch.rand(K, generator=g) + 0.1
    ptrs = []
    for step in range(4):
        x = torch.randn(256, K, generator=g, requires_grad=True)
        h = x * 1.0  # not a leaf: the gradient goes on to MulBackward and is freed, as in a network
        loss, _, probs, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(h, w)
        ptrs.append(probs.data_ptr())  # a view of the buffer, let go before the backward
        del probs
        if step < 3:
            loss.backward()
            got = x.grad
        else:  # the gradient itself: written where probs were
            got, = torch.autograd.grad(loss, h)
            assert got.data_ptr() == ptrs[-1]
        xr = x.detach().double().requires_grad_()
        ref, = torch.autograd.grad(_eq7(xr, w), xr)
        assert (got.double() - ref).abs().max() <= TOL[torch.float32] * 10 * ref.abs().max()
    assert len(set(ptrs)) == 1, ptrs


def test_the_in_place_gradient_is_the_kernels_bit_for_bit():
    for K in (100, 1010):
        x = torch.randn(256, K, requires_grad=True)
        w = torch.rand(K) + 0.1
        loss, _, probs, mean = torch.ops.cbgan_ext.class_balancing_loss_forward(x, w)
        expect = torch.ops.cbgan_ext._class_balancing_loss_backward(torch.ones(()), probs, w, mean)
        at = probs.data_ptr()
        del probs
        got, = torch.autograd.grad(loss, x)
        assert got.data_ptr() == at and torch.equal(got, expect)


def test_what_a_caller_holds_is_never_overwritten():
    K = 1010
    w = torch.rand(K) + 0.1
    x = torch.randn(256, K, requires_grad=True)
    loss, _, probs, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(x, w)  # the caller keeps probs
    keep = probs.clone()
    loss.backward()
    assert torch.equal(probs, keep)
    _, _, probs2, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(x.detach(), w)
    assert probs2.data_ptr() != probs.data_ptr() and torch.equal(probs2, keep)
    del probs2
    kept = []  # a gradient kept by a hook survives the next steps
    h = x * 1.0
    h.register_hook(kept.append)
    ops.class_balancing_loss(h, w).backward()
    snapshot = kept[0].clone()
    for _ in range(2):
        ops.class_balancing_loss(x * 1.0, w).backward()
        assert torch.equal(kept[0], snapshot)
    loss = ops.class_balancing_loss(x * 1.0, w)  # a retained graph keeps its probs for the second backward
    g1, = torch.autograd.grad(loss, x, retain_graph=True)
    g2, = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("K", [17, 33, 100, 1010])
def test_rows_side_by_side_equal_rows_alone_bit_for_bit(K):
    """The CPU kernel runs float rows four at a time and the rest one at a time: a row's probs, and its argmax,
    must not depend on which way it went."""
    g = torch.Generator().manual_seed(K)
    x = 5 * torch.randn(7, K, generator=g)
    x[2, 1] = float("nan")  # a NaN row among the four side by side
    w = torch.rand(K, generator=g) + 0.1
    _, counts, probs, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(x, w)
    for b in range(7):
        _, c1, p1, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(x[b:b + 1].clone(), w)
        assert torch.equal(p1[0], probs[b]) or (b == 2 and p1[0].isnan().all() and probs[b].isnan().all())
    assert torch.equal(counts, reference.argmax_counts(x))


@pytest.mark.parametrize("K", [64, 100, 1010])
def test_class_logs_are_libm_accurate_over_the_whole_range(K):
    """From 64 classes the CPU kernels take log p̂ from their own vector log. The backward op reads mean_probs
    as given: with probs rows (1/2 at class 0, 1/2 at class j) and p̂_0 = 1, w = 1, the gradient at (j, j) is
    (log p̂_j - log 1) / (4 B), which shows each log, denormal p̂ included."""
    g = torch.Generator().manual_seed(K)
    B = K - 1
    mean = torch.ones(K)
    mean[1:] = torch.exp(torch.empty(B).uniform_(-103.0, 0.0, generator=g))  # down into float32's denormals
    mean[1] = 1.4e-45  # the smallest denormal
    probs = torch.zeros(B, K)
    probs[:, 0] = 0.5
    probs[torch.arange(B), torch.arange(1, K)] = 0.5
    grad = torch.ops.cbgan_ext._class_balancing_loss_backward(torch.ones(()), probs, torch.ones(K), mean)
    got = grad[torch.arange(B), torch.arange(1, K)].double() * 4 * B
    expect = mean[1:].double().log()
    # (g_j - <p, g>) cancels half of g_j + g_0: float32 rounding of numbers of size |log p̂|
    assert ((got - expect).abs() <= 4e-7 * expect.abs().clamp(min=1)).all(), (got - expect).abs().max()


@pytest.mark.parametrize("device", DEVICES)
def test_loss_op_is_the_forwards_loss(device):
    """ops.class_balancing_loss(_with_counts) call composite ops that return fewer of the forward's tensors: they
    give the forward's loss, counts and gradient, bit for bit."""
    cb = torch.ops.cbgan_ext
    for K in (10, 100):
        x = torch.randn(32, K, device=device, requires_grad=True)
        w = torch.rand(K, device=device) + 0.1
        full, full_counts, _, _ = cb.class_balancing_loss_forward(x, w)
        loss = cb.class_balancing_loss(x, w)
        loss2, counts = cb.class_balancing_loss_with_counts(x, w)
        assert torch.equal(loss, full) and torch.equal(loss2, full) and torch.equal(counts, full_counts)
        g = torch.autograd.grad(full, x)[0]
        assert torch.equal(torch.autograd.grad(loss, x)[0], g) and torch.equal(torch.autograd.grad(loss2, x)[0], g)
        torch.library.opcheck(cb.class_balancing_loss.default, (x, w))
        torch.library.opcheck(cb.class_balancing_loss_with_counts.default, (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [17, 100, 1010])
def test_minus_inf_logits_get_probability_zero(device, K):
    # masked classes (-inf) get exactly 0; a row of -inf alone is 0/0 = NaN, and +Inf makes its row NaN, as torch
    g = torch.Generator().manual_seed(K)
    x = 3 * torch.randn(12, K, generator=g)
    x[:, ::3] = float("-inf")
    x[4] = float("-inf")
    x[7, 5] = float("inf")
    _, counts, probs, _ = torch.ops.cbgan_ext.class_balancing_loss_forward(x.to(device), torch.ones(K, device=device))
    probs, ref = probs.cpu(), torch.softmax(x, 1)
    torch.testing.assert_close(probs, ref, rtol=2e-6, atol=0, equal_nan=True)
    finite = [b for b in range(12) if b not in (4, 7)]
    assert (probs[finite][:, ::3] == 0).all()
    assert probs[4].isnan().all() and probs[7].isnan().all()
    assert torch.equal(counts.cpu(), reference.argmax_counts(x))
