"""Spectrally normalized layers: drop-ins for ``torch.nn.utils.spectral_norm(nn.Conv2d(...))`` and friends.

    D = nn.Sequential(SNConv2d(3, 64, 3, 1, 1), nn.LeakyReLU(0.1), ..., SNLinear(512, 1))
    spectral_norm_update_(D)        # optional: every layer's power iteration in one launch
    out = D(x)                      # each layer uses the W_sn computed above

Semantics are those of torch.nn.utils.spectral_norm (the one StudioGAN, BigGAN and CBGAN use): in training
mode every forward runs ``n_power_iterations`` steps of v = normalize(Wᵀu, eps), u = normalize(W v, eps) and
updates the buffers in place; σ = uᵀ W v; the layer uses W / σ, with gradients through σ for u and v held
constant. In eval mode u and v are left untouched and σ = uᵀ W v. Parameter ``weight_orig`` and buffers
``weight_u``, ``weight_v`` are registered in torch's order and with torch's state-dict hooks, so torch-SN
checkpoints (and optimizer states) load as they are. The difference is speed: the whole of it is one fused
op per layer (power iteration and W / σ in one launch, and a fused backward), or one op for a whole model
with :func:`spectral_norm_update_`.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm, SpectralNormLoadStateDictPreHook, SpectralNormStateDictHook

from ..ops.spectral_norm import spectral_norm_weight_module, spectral_norm_weight_multi_module

__all__ = ["SNConv2d", "SNConvTranspose2d", "SNLinear", "SNEmbedding", "convert_spectral_norm",
           "spectral_norm_update_"]


class _SpectralNormMixin:
    """Shared by the SN layers. ``self._sn`` is a torch SpectralNorm object: it holds name, dim,
    n_power_iterations and eps and serves torch's state-dict hooks; it is not registered as a forward hook."""

    _sn_default_dim = 0

    def __init__(self, *args, n_power_iterations=1, eps=1e-12, dim=None, **kwargs):
        super().__init__(*args, **kwargs)  # the wrapped torch layer, next in the MRO
        self._init_spectral_norm(n_power_iterations, eps, dim)

    def _init_spectral_norm(self, n_power_iterations, eps, dim):
        if dim is None:
            dim = self._sn_default_dim
        # torch's own checks (n_power_iterations > 0) and its u, v initialisation, so that the same seed gives
        # the same layer as torch.nn.utils.spectral_norm(nn.<Layer>(...)).
        fn = SpectralNorm("weight", n_power_iterations, dim, eps)
        weight = self._parameters["weight"]
        with torch.no_grad():
            h, w = fn.reshape_weight_to_matrix(weight).shape
            u = F.normalize(weight.new_empty(h).normal_(0, 1), dim=0, eps=fn.eps)
            v = F.normalize(weight.new_empty(w).normal_(0, 1), dim=0, eps=fn.eps)
        delattr(self, "weight")
        self.register_parameter("weight_orig", weight)
        setattr(self, "weight", weight.data)  # as torch: a plain attribute, W_sn after each forward
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)
        self._attach_spectral_norm(fn)

    def _attach_spectral_norm(self, fn, hooks=True):
        self._sn = fn
        self._sn_cache = None
        if hooks:
            self._register_state_dict_hook(SpectralNormStateDictHook(fn))
            self._register_load_state_dict_pre_hook(SpectralNormLoadStateDictPreHook(fn))

    @property
    def n_power_iterations(self):
        return self._sn.n_power_iterations

    @property
    def eps(self):
        return self._sn.eps

    @property
    def sn_dim(self):
        return self._sn.dim

    def normalized_weight(self):
        """W_sn = W / σ with σ = uᵀ W v for the current buffers: the W_sn the last training forward used
        (while W is unchanged), and what an eval forward uses. No side effects; differentiable w.r.t. W."""
        return spectral_norm_weight_module(self.weight_orig, self.weight_u, self.weight_v, self._sn.dim, 0,
                                            self._sn.eps)[0]

    def forward_weight(self):
        """The W_sn this module's forward would use, with its side effects (in training mode, the power iteration
        updates u, v): for code that applies the layer's weight itself (a fused upsample-conv, a projection)."""
        return self._spectral_norm_forward_weight()

    def _spectral_norm_forward_weight(self):
        # What torch's forward pre-hook does, fused: the weight this forward uses.
        cache = self._sn_cache
        if cache is not None:
            self._sn_cache = None
            w_sn, w_ref, version, training, with_grad = cache
            # Under torch.compile the version counter cannot be read: the cache is trusted there.
            fresh = torch.compiler.is_compiling() or version == w_ref._version
            if w_ref is self.weight_orig and fresh and training == self.training:
                if with_grad or not (torch.is_grad_enabled() and w_ref.requires_grad):
                    self.weight = w_sn
                    return w_sn
                # spectral_norm_update_ ran under no_grad: u, v are this step's already, recompute W / σ.
                w_sn = self.normalized_weight()
                self.weight = w_sn
                return w_sn
            # W changed (or train/eval switched) since spectral_norm_update_: that update stands as a step of
            # its own and this forward runs its own, as a torch forward would.
        n = self._sn.n_power_iterations if self.training else 0
        w_sn, u, v, _ = spectral_norm_weight_module(self.weight_orig, self.weight_u, self.weight_v, self._sn.dim, n,
                                                     self._sn.eps)
        if n:
            with torch.no_grad():  # in place, as torch does (DataParallel replicas share the buffers)
                torch._foreach_copy_([self.weight_u, self.weight_v], [u, v])
        self.weight = w_sn
        return w_sn


class SNConv2d(_SpectralNormMixin, nn.Conv2d):
    """nn.Conv2d with spectral normalization: ``spectral_norm(nn.Conv2d(...))`` with the same arguments,
    plus keyword-only ``n_power_iterations`` (1), ``eps`` (1e-12; StudioGAN uses 1e-6) and ``dim`` (0)."""

    def forward(self, input):
        return self._conv_forward(input, self._spectral_norm_forward_weight(), self.bias)


class SNConvTranspose2d(_SpectralNormMixin, nn.ConvTranspose2d):
    """nn.ConvTranspose2d with spectral normalization over dim 1 (the output channels), as torch does."""

    _sn_default_dim = 1

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        weight = self._spectral_norm_forward_weight()
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return F.conv_transpose2d(input, weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                                  self.dilation)


class SNLinear(_SpectralNormMixin, nn.Linear):
    """nn.Linear with spectral normalization (W [out, in])."""

    def forward(self, input):
        return F.linear(input, self._spectral_norm_forward_weight(), self.bias)


class SNEmbedding(_SpectralNormMixin, nn.Embedding):
    """nn.Embedding with spectral normalization of the table [num_embeddings, embedding_dim] over dim 0,
    as ``spectral_norm(nn.Embedding(...))`` (StudioGAN's snembed). A sparse=True table gets dense gradients,
    as with torch's spectral norm (the σ term touches every row)."""

    def forward(self, input):
        return F.embedding(input, self._spectral_norm_forward_weight(), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)


_CONVERT = {nn.Conv2d: SNConv2d, nn.ConvTranspose2d: SNConvTranspose2d, nn.Linear: SNLinear,
            nn.Embedding: SNEmbedding}


def _torch_sn_hook(module):
    for key, hook in module._forward_pre_hooks.items():
        if isinstance(hook, SpectralNorm) and hook.name == "weight":
            return key, hook
    return None, None


def _parametrized_sn(module):
    """torch.nn.utils.parametrizations.spectral_norm on ``module.weight`` (and no other parametrization of it):
    (the layer class underneath, the _SpectralNorm), else (None, None)."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import _SpectralNorm
    if not parametrize.is_parametrized(module, "weight"):
        return None, None
    chain = module.parametrizations["weight"]
    base = type(module).__bases__[0]
    if len(chain) != 1 or not isinstance(chain[0], _SpectralNorm) or base not in _CONVERT:
        return None, None
    return base, chain[0]


def _take_over(module, cls):
    """A ``cls`` object holding ``module``'s state as it is: the same Parameter and buffer objects (optimizers keep
    working), its own copies of the hook/parameter dicts and sets."""
    new = cls.__new__(cls)
    new.__dict__ = {k: type(val)(val) if isinstance(val, (dict, set)) else val for k, val in module.__dict__.items()}
    return new


def _convert_parametrized(module, base, sn):
    # The same Parameter object becomes weight_orig and the buffers weight_u / weight_v (optimizers keep
    # working); the module passed in is left as it was.
    new = _take_over(module, _CONVERT[base])
    others = {k: m for k, m in new._modules.items() if k != "parametrizations"}
    new._modules = type(new._modules)(others)
    weight = module.parametrizations["weight"].original
    new.register_parameter("weight_orig", weight)
    setattr(new, "weight", weight.data)
    new.register_buffer("weight_u", sn._u)
    new.register_buffer("weight_v", sn._v)
    new._attach_spectral_norm(SpectralNorm("weight", sn.n_power_iterations, sn.dim, sn.eps))
    return new


def _convert_one(module):
    base, psn = _parametrized_sn(module)
    if psn is not None:
        return _convert_parametrized(module, base, psn)
    cls = _CONVERT.get(type(module))
    key, fn = _torch_sn_hook(module)
    if cls is None or fn is None:
        return module
    # Same other hooks; torch's state-dict hooks already reference fn, which becomes the layer's _sn.
    new = _take_over(module, cls)
    for hooks in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_pre_hooks_always_called"):
        getattr(new, hooks, {}).pop(key, None)
    new._attach_spectral_norm(fn, hooks=False)
    return new


def convert_spectral_norm(model):
    """Swap every nn.Conv2d / ConvTranspose2d / Linear / Embedding in ``model`` whose weight has spectral norm,
    by ``torch.nn.utils.spectral_norm`` or by ``torch.nn.utils.parametrizations.spectral_norm``, for the fused
    layer, keeping its weight Parameter, u, v, settings and other hooks.

    Returns the model (a new object only when ``model`` itself is such a layer). A converted parametrization
    gives the same outputs in eval mode (σ = uᵀ W v of the same u, v); its training steps then follow
    ``torch.nn.utils.spectral_norm``'s order (v from u, then u) where the parametrization computes u from v
    first: the same power iteration, half a step apart. State-dict keys become ``weight_orig``, ``weight_u``,
    ``weight_v``: convert after loading a parametrized checkpoint. Subclasses of those layers, other SN'd types
    and weights with other parametrizations are left as they are.
    """
    new_root = _convert_one(model)
    stack = [new_root]
    while stack:
        parent = stack.pop()
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            new = _convert_one(child)
            if new is not child:
                parent._modules[name] = new
            stack.append(new)
    return new_root


def spectral_norm_update_(model):
    """Run the spectral-norm step of every SN layer of ``model`` at once: one fused launch per (device, dtype,
    n_power_iterations, eps) group, usually one for the whole model, instead of one per layer.

    Each layer's next forward then uses the W_sn computed here instead of running its own step, so training
    semantics are exactly torch's (one step per forward); a layer whose weight changed (e.g. an optimizer
    step) or whose train/eval mode switched in between runs its own step again. Layers in eval mode get
    σ = uᵀ W v with u, v untouched. Call it right before ``model(x)``; gradients flow as usual (the backward of
    all layers' W / σ is one launch too). Returns the model.
    """
    groups = {}
    for m in model.modules():
        if isinstance(m, _SpectralNormMixin):
            w = m.weight_orig
            n = m._sn.n_power_iterations if m.training else 0
            groups.setdefault((w.device, w.dtype, n, m._sn.eps), []).append(m)
    with_grad = torch.is_grad_enabled()
    for (_, _, n, eps), layers in groups.items():
        weights = [m.weight_orig for m in layers]
        us = [m.weight_u for m in layers]
        vs = [m.weight_v for m in layers]
        w_sn, new_u, new_v, _ = spectral_norm_weight_multi_module(weights, us, vs, [m._sn.dim for m in layers], n,
                                                                   eps)
        if n:
            with torch.no_grad():
                torch._foreach_copy_(us + vs, list(new_u) + list(new_v))
        for m, w in zip(layers, w_sn):
            m._sn_cache = (w, m.weight_orig, m.weight_orig._version, m.training, with_grad)
            m.weight = w
    return model
