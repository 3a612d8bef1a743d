import pytest
import torch
import torch.nn.functional as F

import cbgan_ext
from cbgan_ext import ops, reference
from cbgan_ext.ops.diff_augment import _CODE, DiffAugmentParams
from conftest import DEVICES, at_one_and_many_threads

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(4, 3, 32, 32), (3, 3, 7, 9), (2, 1, 5, 4), (5, 4, 16, 12), (2, 3, 13, 8), (3, 3, 1, 6)]
# Every subset in the default order, other orders, and repeated groups.
POLICIES = ["", "color", "translation", "cutout", "color,translation", "color,cutout", "translation,cutout",
            "color,translation,cutout", "translation,color", "cutout,color,translation", "color,color",
            "translation,cutout,color,translation,color", "cutout,cutout,translation,translation"]


# ---- DiffAugment_pytorch.py, restated: the same torch calls in the same order (the seeded-equality oracle) --

def _orig_brightness(x):
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def _orig_saturation(x):
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) * 2) + m


def _orig_contrast(x):
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - m) * (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5) + m


def _orig_translation(x, ratio=0.125):
    sh, sw = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    th = torch.randint(-sh, sh + 1, size=[x.size(0), 1, 1], device=x.device)
    tw = torch.randint(-sw, sw + 1, size=[x.size(0), 1, 1], device=x.device)
    b, i, j = torch.meshgrid(torch.arange(x.size(0), device=x.device), torch.arange(x.size(2), device=x.device),
                             torch.arange(x.size(3), device=x.device), indexing="ij")
    i = torch.clamp(i + th + 1, 0, x.size(2) + 1)
    j = torch.clamp(j + tw + 1, 0, x.size(3) + 1)
    return F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0]).permute(0, 2, 3, 1).contiguous()[b, i, j].permute(0, 3, 1, 2)


def _orig_cutout(x, ratio=0.5):
    size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    oh = torch.randint(0, x.size(2) + (1 - size[0] % 2), size=[x.size(0), 1, 1], device=x.device)
    ow = torch.randint(0, x.size(3) + (1 - size[1] % 2), size=[x.size(0), 1, 1], device=x.device)
    b, i, j = torch.meshgrid(torch.arange(x.size(0), device=x.device), torch.arange(size[0], device=x.device),
                             torch.arange(size[1], device=x.device), indexing="ij")
    i = torch.clamp(i + oh - size[0] // 2, min=0, max=x.size(2) - 1)
    j = torch.clamp(j + ow - size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[b, i, j] = 0
    return x * mask.unsqueeze(1)


_ORIG = {"color": [_orig_brightness, _orig_saturation, _orig_contrast], "translation": [_orig_translation],
         "cutout": [_orig_cutout]}


def original_diff_augment(x, policy):
    if policy:
        for p in policy.split(","):
            for f in _ORIG[p]:
                x = f(x)
    return x


# ---- helpers --------------------------------------------------------------------------------------------

def _input(shape, dtype, device, channels_last=False):
    x = torch.randn(shape, dtype=torch.float64).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _assert_close(got, expect, dtype):
    assert got.shape == expect.shape
    scale = max(1.0, expect.abs().max().item()) if expect.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), expect.double().cpu(), rtol=TOL[dtype], atol=TOL[dtype] * scale)


# ---- forward and backward against the reference ---------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_forward_matches_reference(device, policy, dtype, channels_last):
    for shape in SHAPES:
        x = _input(shape, dtype, device, channels_last)
        params = ops.sample_diff_augment_params(x, policy)
        y = ops.diff_augment(x, policy, params=params)
        assert y.dtype == dtype and y.device == x.device
        if channels_last and policy:
            assert y.is_contiguous(memory_format=torch.channels_last)
        # the reference in float64 on the same (rounded) input and the same factors
        expect = reference.diff_augment(x.double(), policy, params=params)
        _assert_close(y, expect, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("policy", [p for p in POLICIES if p])
def test_backward_matches_reference(device, policy, dtype, channels_last):
    for shape in SHAPES[:4]:
        x = _input(shape, dtype, device, channels_last)
        params = ops.sample_diff_augment_params(x, policy)
        g = torch.randn(shape, dtype=torch.float64, device=device)
        xf = x.clone().requires_grad_()
        gx, = torch.autograd.grad(ops.diff_augment(xf, policy, params=params), xf, g.to(dtype))
        xr = x.double().requires_grad_()
        gr, = torch.autograd.grad(reference.diff_augment(xr, policy, params=params), xr, g.to(dtype).double())
        assert gx.dtype == dtype
        _assert_close(gx, gr, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_large_shifts_and_cutouts(device):
    # ratios beyond the defaults: translations past the border, cutouts larger than the image
    for tr, cr in [(0.6, 1.3), (1.0, 0.9), (0.3, 0.05), (0.0, 0.0)]:
        for policy in ["translation,cutout,color", "color,translation,cutout", "cutout,translation"]:
            x = _input((6, 3, 9, 14), torch.float64, device)
            params = ops.sample_diff_augment_params(x, policy, translation_ratio=tr, cutout_ratio=cr)
            y = ops.diff_augment(x, policy, params=params)
            _assert_close(y, reference.diff_augment(x, policy, params=params), torch.float64)
            xg = x.clone().requires_grad_()
            g = torch.randn_like(x)
            a, = torch.autograd.grad(ops.diff_augment(xg, policy, params=params), xg, g)
            b, = torch.autograd.grad(reference.diff_augment(xg, policy, params=params), xg, g)
            _assert_close(a, b, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    base = torch.randn(6, 5, 20, 24, device=device)
    views = [base[::2, 1:4, 2:18, ::2], base.permute(0, 1, 3, 2)[:, :3],
             base.contiguous(memory_format=torch.channels_last)[:, :3, 1:, :-3]]
    for x in views:
        assert not x.is_contiguous()
        params = ops.sample_diff_augment_params(x, "color,translation,cutout")
        xg = x.clone().requires_grad_()
        y = ops.diff_augment(xg, params=params)
        _assert_close(y, reference.diff_augment(x.contiguous(), params=params), torch.float32)
        g = torch.randn(y.shape, device=device)
        a, = torch.autograd.grad(y, xg, g)
        xr = x.contiguous().requires_grad_()
        b, = torch.autograd.grad(reference.diff_augment(xr, params=params), xr, g)
        _assert_close(a, b, torch.float32)


# ---- seeded equality with the reference's random stream --------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("policy", ["color,translation,cutout", "translation,color", "cutout,color,color",
                                    "color", "translation", "cutout", "translation,cutout"])
def test_seeded_equality_with_original(device, policy, dtype):
    for seed, shape in [(0, (8, 3, 32, 32)), (123, (5, 3, 17, 11)), (7, (3, 1, 6, 6))]:
        x = _input(shape, dtype, device)
        torch.manual_seed(seed)
        y = ops.diff_augment(x, policy)
        after_fused = torch.rand(4, device=device)
        torch.manual_seed(seed)
        expect = original_diff_augment(x, policy)
        after_orig = torch.rand(4, device=device)
        # same stream consumed: the next draw agrees too
        assert torch.equal(after_fused, after_orig)
        # the original computes in x's dtype; compare in float64 with x's dtype rounding allowed
        _assert_close(y, expect, dtype if dtype != torch.float64 else torch.float32)
        if dtype == torch.float64:
            torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_equality_reference_and_generator(device):
    x = _input((6, 3, 16, 16), torch.float32, device)
    for policy in POLICIES:
        torch.manual_seed(11)
        a = reference.diff_augment(x, policy)
        torch.manual_seed(11)
        b = original_diff_augment(x, policy)
        torch.manual_seed(11)
        c = ops.diff_augment(x, policy)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        _assert_close(c, b, torch.float32)
        g1 = torch.Generator(device=device).manual_seed(5)
        g2 = torch.Generator(device=device).manual_seed(5)
        _assert_close(ops.diff_augment(x, policy, generator=g1), reference.diff_augment(x, policy, generator=g2),
                      torch.float32)
        assert torch.equal(torch.rand(3, generator=g1, device=device), torch.rand(3, generator=g2, device=device))
    # ratios: the fused op and the reference draw the same ranges
    g1 = torch.Generator(device=device).manual_seed(2)
    g2 = torch.Generator(device=device).manual_seed(2)
    _assert_close(ops.diff_augment(x, generator=g1, translation_ratio=0.3, cutout_ratio=0.25),
                  reference.diff_augment(x, generator=g2, translation_ratio=0.3, cutout_ratio=0.25), torch.float32)


def test_params_draw_ranges():
    x = torch.randn(4000, 3, 32, 20)
    p = ops.sample_diff_augment_params(x, "color,translation,cutout")
    assert p.color.shape == (1, 4000, 3) and p.translation.shape == (1, 4000, 2) and p.cutout.shape == (1, 4000, 2)
    assert p.translation.dtype == torch.int64 and p.cutout.dtype == torch.int64
    assert p.cutout_size == (16, 10)
    c = p.color[0]
    assert (c[:, 0] >= -0.5).all() and (c[:, 0] < 0.5).all()
    assert (c[:, 1] >= 0).all() and (c[:, 1] < 2).all()
    assert (c[:, 2] >= 0.5).all() and (c[:, 2] < 1.5).all()
    t = p.translation[0]
    assert t[:, 0].min() == -4 and t[:, 0].max() == 4 and t[:, 1].min() == -3 and t[:, 1].max() == 3  # int(2.5+.5)
    o = p.cutout[0]
    assert o[:, 0].min() == 0 and o[:, 0].max() == 32 and o[:, 1].min() == 0 and o[:, 1].max() == 20
    # float16 x: factors drawn in float16, carried in float32
    ph = ops.sample_diff_augment_params(x[:8].half(), "color")
    assert ph.color.dtype == torch.float32


# ---- replay, identity, module ----------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_params_replay_and_other_batch(device):
    x = _input((5, 3, 12, 12), torch.float32, device)
    x2 = _input((5, 3, 12, 12), torch.float32, device)
    p = ops.sample_diff_augment_params(x, "color,translation,cutout")
    assert p.color.device == x.device and p.translation.device == x.device
    assert torch.equal(ops.diff_augment(x, params=p), ops.diff_augment(x, params=p))
    _assert_close(ops.diff_augment(x2, params=p), reference.diff_augment(x2, params=p), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_identity_policy_and_empty_batch(device):
    x = _input((3, 3, 8, 8), torch.float32, device)
    assert ops.diff_augment(x, "") is x
    e = torch.randn(0, 3, 8, 8, device=device)
    assert ops.diff_augment(e).shape == (0, 3, 8, 8)


def test_module_drop_in():
    assert cbgan_ext.DiffAugment is cbgan_ext.nn.DiffAugment
    x = torch.randn(6, 3, 16, 16)
    aug = cbgan_ext.DiffAugment("color,translation,cutout")
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = original_diff_augment(x, "color,translation,cutout")
    _assert_close(a, b, torch.float32)
    # channels_first=False takes [B, H, W, C] as the reference's flag does
    xh = x.permute(0, 2, 3, 1)
    torch.manual_seed(4)
    a = cbgan_ext.DiffAugment("translation,color", channels_first=False)(xh)
    torch.manual_seed(4)
    b = original_diff_augment(x, "translation,color").permute(0, 2, 3, 1)
    _assert_close(a, b, torch.float32)
    assert cbgan_ext.DiffAugment("")(x) is x
    p = aug.sample_params(x)
    assert torch.equal(aug(x, p), aug(x, p))
    assert "color,translation,cutout" in repr(aug)
    g = torch.Generator().manual_seed(9)
    a = cbgan_ext.DiffAugment("color,cutout", generator=g)(x)
    b = reference.diff_augment(x, "color,cutout", generator=torch.Generator().manual_seed(9))
    _assert_close(a, b, torch.float32)


def test_function_spelling_of_the_reference():
    """cbgan_ext.diff_augment(x, policy, channels_first) is DiffAugment_pytorch.py's DiffAugment; the module
    called the reference's way says how to spell either."""
    x = torch.randn(5, 3, 12, 12)
    torch.manual_seed(11)
    a = cbgan_ext.diff_augment(x, "color,translation,cutout")
    torch.manual_seed(11)
    b = original_diff_augment(x, "color,translation,cutout")
    _assert_close(a, b, torch.float32)
    xh = x.permute(0, 2, 3, 1)
    torch.manual_seed(12)
    a = cbgan_ext.diff_augment(xh, "translation,color", channels_first=False)
    torch.manual_seed(12)
    b = original_diff_augment(x, "translation,color").permute(0, 2, 3, 1)
    _assert_close(a, b, torch.float32)
    assert cbgan_ext.diff_augment(x) is x  # the reference's default policy '' is the identity
    for misuse in (lambda: cbgan_ext.DiffAugment(x, "color"), lambda: cbgan_ext.DiffAugment(x)):
        with pytest.raises(TypeError, match=r"^DiffAugment is a module: DiffAugment\(policy\)\(x\); .* "
                                            r"cbgan_ext.diff_augment\(x, policy\)$"):
            misuse()
    with pytest.raises(TypeError, match="^diff_augment: policy must be a string"):
        cbgan_ext.ops.diff_augment(x, 5)
    with pytest.raises(TypeError, match="^diff_augment: x must be a tensor"):
        cbgan_ext.diff_augment("color", x)


# ---- autograd machinery ----------------------------------------------------------------------------------

def test_gradcheck_float64():
    for policy in ["color,translation,cutout", "translation,color", "cutout,color,translation,color",
                   "color,color", "translation,cutout"]:
        for shape, cl in [((2, 3, 5, 6), False), ((3, 2, 4, 7), True)]:
            x = _input(shape, torch.float64, "cpu", cl).requires_grad_()
            p = ops.sample_diff_augment_params(x, policy, translation_ratio=0.3, cutout_ratio=0.4)
            f = lambda t: ops.diff_augment(t, policy, params=p)  # noqa: E731
            assert torch.autograd.gradcheck(f, (x,))
            assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.needs_cuda
def test_gradcheck_float64_cuda():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    p = ops.sample_diff_augment_params(x, "translation,color,cutout", translation_ratio=0.3)
    f = lambda t: ops.diff_augment(t, "translation,color,cutout", params=p)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for policy, shape, cl in [("color,translation,cutout", (4, 3, 8, 8), False),
                              ("translation,color", (3, 3, 6, 9), True), ("cutout,color,cutout", (2, 1, 5, 5), False)]:
        x = _input(shape, torch.float32, device, cl).requires_grad_()
        p = ops.sample_diff_augment_params(x, policy)
        prog = [_CODE[g] for g in p.policy]
        args = (x, prog, p.color, p.translation, p.cutout, list(p.cutout_size))
        torch.library.opcheck(torch.ops.cbgan_ext.diff_augment.default, args)
        g = _input(shape, torch.float32, device, cl).requires_grad_()
        torch.library.opcheck(torch.ops.cbgan_ext._diff_augment_backward.default, (g,) + args[1:])


def test_torch_compile_fullgraph():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    p = ops.sample_diff_augment_params(x, "color,translation,cutout")

    def f(t):
        return (ops.diff_augment(t * 2.0, params=p) ** 2).sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    l1 = cf(x)
    g1, = torch.autograd.grad(l1, x)
    l2 = f(x)
    g2, = torch.autograd.grad(l2, x)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2)
    # drawing the parameters inside the compiled region: the module traces whole and draws the same stream
    aug = cbgan_ext.DiffAugment("color,translation,cutout")
    caug = torch.compile(aug, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    a = caug(x)
    torch.manual_seed(5)
    b = original_diff_augment(x.detach(), "color,translation,cutout")
    _assert_close(a, b, torch.float32)
    ga, = torch.autograd.grad(a.sum(), x)
    assert torch.isfinite(ga).all()


def test_autocast_and_half_paths_cpu():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = ops.diff_augment(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_name_the_op(device):
    x = torch.randn(4, 3, 8, 8, device=device)
    with pytest.raises(ValueError, match="diff_augment: .*4-D"):
        ops.diff_augment(torch.randn(3, 8, 8, device=device))
    with pytest.raises(TypeError, match="diff_augment: .*float16"):
        ops.diff_augment(torch.randint(0, 5, (4, 3, 8, 8), device=device))
    with pytest.raises(ValueError, match="diff_augment: unknown policy word 'colour'"):
        ops.diff_augment(x, "colour,translation")
    with pytest.raises(ValueError, match="diff_augment: unknown policy word"):
        ops.diff_augment(x, "color,,cutout")
    p = ops.sample_diff_augment_params(torch.randn(5, 3, 8, 8, device=device), "color,translation,cutout")
    with pytest.raises(ValueError, match="diff_augment: .*batch of 5"):
        ops.diff_augment(x, params=p)
    p4 = ops.sample_diff_augment_params(x, "color,cutout")
    with pytest.raises(ValueError, match="diff_augment: params were drawn for policy 'color,cutout'"):
        ops.diff_augment(x, "color,translation,cutout", params=p4)
    with pytest.raises(TypeError, match="diff_augment: params must be DiffAugmentParams"):
        ops.diff_augment(x, params={"color": p4.color})
    with pytest.raises(TypeError, match="diff_augment: x must be a tensor"):
        ops.diff_augment([[1.0]])
    # the dispatcher op checks its own arguments
    op = torch.ops.cbgan_ext.diff_augment
    c, t, k = p4.color, torch.zeros(0, 4, 2, dtype=torch.long, device=device), p4.cutout
    with pytest.raises(RuntimeError, match="diff_augment: x must be 4-D"):
        op(x[0], [0, 2], c, t, k, [4, 4])
    with pytest.raises(RuntimeError, match="diff_augment: program entries"):
        op(x, [0, 5], c, t, k, [4, 4])
    with pytest.raises(RuntimeError, match="diff_augment: color params must be"):
        op(x, [0, 0, 2], c, t, k, [4, 4])
    with pytest.raises(RuntimeError, match="diff_augment: cutout params must be int64"):
        op(x, [0, 2], c, t, k.float(), [4, 4])
    with pytest.raises(RuntimeError, match="diff_augment: translation params must be int64"):
        op(x, [0, 1, 2], c, t, k, [4, 4])
    with pytest.raises(RuntimeError, match="diff_augment: cutout_size"):
        op(x, [0, 2], c, t, k, [4])
    with pytest.raises(RuntimeError, match="diff_augment: at most 16"):
        op(x, [1] * 17, c[:0], torch.zeros(17, 4, 2, dtype=torch.long, device=device), k[:0], [4, 4])


@pytest.mark.needs_cuda
def test_params_on_wrong_device():
    x = torch.randn(4, 3, 8, 8, device="cuda")
    p = ops.sample_diff_augment_params(x.cpu(), "color,translation,cutout")
    with pytest.raises(RuntimeError, match="diff_augment: .*same device"):
        ops.diff_augment(x, params=p)


# ---- backends --------------------------------------------------------------------------------------------

@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_cuda_parity(dtype, channels_last):
    for policy in ["color,translation,cutout", "translation,cutout,color,translation,color"]:
        x = _input((9, 3, 21, 18), dtype, "cpu", channels_last)
        p = ops.sample_diff_augment_params(x, policy)
        yc = ops.diff_augment(x, policy, params=p)
        yg = ops.diff_augment(x.cuda(), policy, params=p.to("cuda"))
        _assert_close(yg, yc, dtype)
        g = torch.randn_like(x)
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        a, = torch.autograd.grad(ops.diff_augment(xc, policy, params=p), xc, g)
        b, = torch.autograd.grad(ops.diff_augment(xg, policy, params=p.to("cuda")), xg, g.cuda())
        _assert_close(b, a, dtype)


def test_deterministic_across_thread_counts():
    x = torch.randn(64, 3, 32, 32)
    policy = "translation,color,cutout"
    p = ops.sample_diff_augment_params(x, policy)
    g = torch.randn_like(x)

    def run():
        xg = x.clone().requires_grad_()
        y = ops.diff_augment(xg, policy, params=p)
        return y, torch.autograd.grad(y, xg, g)[0]

    a, b = at_one_and_many_threads(run)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_params_dataclass_to():
    x = torch.randn(2, 3, 4, 4)
    p = ops.sample_diff_augment_params(x, "color,translation")
    q = p.to("cpu")
    assert isinstance(q, DiffAugmentParams) and q.policy == ("color", "translation") and q.batch_size == 2
