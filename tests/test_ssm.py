"""S5SSM: every backend, step-by-step and chunked runs against the paper's equations
(conftest.naive_ssm) applied to each sequence's valid steps, episode by episode."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s5ssm import S5SSM
from s5ssm.scan import cpu, cpu_layer, irregular
from conftest import naive_ssm

C_INITS = ["trunc_standard_normal", "lecun_normal", "complex_normal"]
F32_TOL = dict(rtol=1e-4, atol=1e-4)  # float32 layer vs float64 truth, O(1) outputs, L <= 9


def make_layer(H=3, P=8, J=1, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    layer = S5SSM(H, P, J, **kw).to(dtype)
    with torch.no_grad():  # longer timescales than the init: the state matters in short tests
        layer.log_step.add_(2.0)
    return layer


def make_mask(kind, B, L, g):
    if kind == "none":
        return None
    if kind == "right":
        lengths = [L, max(1, L - 3), max(1, L // 2)][:B]
        return torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    mask = torch.rand(B, L, generator=g) < 0.65
    mask[0, 1 % L] = False
    mask[-1, 0] = False  # not right padded
    mask[:, -1] = True if L > 2 else mask[:, -1]
    mask[1 % B, L // 2] = True
    return mask


def make_step_scale(kind, B, L, g):
    if kind == "none":
        return None
    if kind == "float":
        return 1.7
    if kind == "B":
        return torch.rand(B, generator=g, dtype=torch.float64) * 2 + 0.2
    return torch.rand(B, L, generator=g, dtype=torch.float64) * 3 + 0.05


def expected(layer, u, mask=None, resets=None, step_scale=None, state=None):
    """Each sequence alone: valid steps only, one naive run per episode. (y (B, L, H), final (B, P))."""
    B, L, H = u.shape
    y = torch.zeros(B, L, H, dtype=torch.float64)
    finals = []
    for b in range(B):
        idx = [k for k in range(L) if mask is None or bool(mask[b, k])]
        episodes, current = [], []
        for k in idx:
            if resets is not None and bool(resets[b, k]) and (current or k == idx[0]):
                if current:
                    episodes.append((current, first_reset))
                current = []
            if not current:
                first_reset = resets is not None and bool(resets[b, k])
            current.append(k)
        if current:
            episodes.append((current, first_reset))
        x = None if state is None else state[b : b + 1].to(torch.complex128)
        if not episodes:
            finals.append(torch.zeros(1, layer.num_states, dtype=torch.complex128) if x is None else x)
            continue
        for steps, reset in episodes:
            if isinstance(step_scale, torch.Tensor):
                s = step_scale[b : b + 1] if step_scale.dim() == 1 else step_scale[b : b + 1, steps]
            else:
                s = step_scale
            out, x = naive_ssm(layer, u[b : b + 1, steps], s, state=None if reset else x)
            y[b, steps] = out[0]
        finals.append(x)
    return y, torch.cat(finals)


def stepwise(layer, u, mask=None, resets=None, step_scale=None, state=None):
    """layer.step over time; masked steps keep the state, resets at valid steps clear it
    (test-side emulation)."""
    B, L, _ = u.shape
    state = layer.init_state(B) if state is None else state
    ys = []
    for k in range(L):
        if resets is not None:
            clear = resets[:, k] if mask is None else resets[:, k] & mask[:, k]
            state = torch.where(clear[:, None], torch.zeros_like(state), state)
        s = step_scale[:, k] if isinstance(step_scale, torch.Tensor) and step_scale.dim() == 2 else step_scale
        if mask is not None and isinstance(s, torch.Tensor) and s.dim() == 1:
            s = torch.where(mask[:, k], s, torch.ones_like(s))  # the step is discarded anyway
        y, new = layer.step(u[:, k], state, step_scale=s)
        if mask is not None:
            new = torch.where(mask[:, k, None], new, state)
            y = y * mask[:, k, None]
        state = new
        ys.append(y)
    return torch.stack(ys, 1), state


def run(layer, backend, u, **kw):
    layer.scan_backend = backend
    return layer(u, **kw)


def chunked(layer, u, cut, mask=None, resets=None, step_scale=None, state=None):
    part = lambda t, sl: t if t is None or not isinstance(t, torch.Tensor) or t.dim() == 1 else t[:, sl]  # noqa: E731
    first, s = layer(u[:, :cut], mask=part(mask, slice(0, cut)), resets=part(resets, slice(0, cut)),
                     step_scale=part(step_scale, slice(0, cut)), state=state, return_state=True)  # fmt: skip
    second, s = layer(u[:, cut:], mask=part(mask, slice(cut, None)), resets=part(resets, slice(cut, None)),
                      step_scale=part(step_scale, slice(cut, None)), state=s, return_state=True)  # fmt: skip
    return torch.cat([first, second], 1), s


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("conj_sym", [True, False])
def test_layer_grid_float64(conj_sym, bidirectional, discretization, blocks):
    B, L, H = 3, 9, 3
    g = torch.Generator().manual_seed(blocks + 2 * bidirectional)
    layers = [make_layer(H, 8, blocks, seed=i, conj_sym=conj_sym, bidirectional=bidirectional,
                         discretization=discretization, C_init=c) for i, c in enumerate(C_INITS)]  # fmt: skip
    u = torch.randn(B, L, H, dtype=torch.float64, generator=g)
    combos = itertools.product(["none", "right", "gaps"], [False, True], ["none", "float", "B", "BL"])
    for i, (mask_kind, use_resets, scale_kind) in enumerate(combos):
        layer = layers[i % 3]
        mask = make_mask(mask_kind, B, L, g)
        resets = None
        if use_resets:
            resets = torch.rand(B, L, generator=g) < 0.25
            resets[0, 4] = True
            if mask is not None and i % 2:
                resets |= ~mask  # a reset at a masked step is ignored with the rest of the step
        scale = make_step_scale(scale_kind, B, L, g)
        if isinstance(scale, torch.Tensor) and scale.dim() == 2 and mask is not None:
            scale = scale.masked_fill(~mask, float("nan"))  # never read at masked steps
        state = None
        if not bidirectional and i % 2:
            state = torch.randn(B, layer.num_states, dtype=torch.complex128, generator=g)
        kw = dict(mask=mask, resets=resets, step_scale=scale)
        want, want_final = expected(layer, u, state=state, **kw)
        tag = f"{mask_kind=} {use_resets=} {scale_kind=} {layer.C_init}"
        for backend in ("reference", "parallel", "auto"):
            got = run(layer, backend, u, state=state, **kw)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{backend} {tag}: {m}")
        if mask is not None:
            assert torch.all(got[~mask] == 0)
        if bidirectional:
            continue
        _, final = layer(u, state=state, return_state=True, **kw)
        torch.testing.assert_close(final, want_final, rtol=1e-10, atol=1e-10, msg=lambda m: f"final {tag}: {m}")
        ys, s = stepwise(layer, u, state=state, **kw)
        torch.testing.assert_close(ys, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"step {tag}: {m}")
        torch.testing.assert_close(s, want_final, rtol=1e-10, atol=1e-10)
        for cut in (1, 5):
            yc, s = chunked(layer, u, cut, state=state, **kw)
            torch.testing.assert_close(yc, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"chunk {tag}: {m}")
            torch.testing.assert_close(s, want_final, rtol=1e-10, atol=1e-10, msg=lambda m: f"chunk {tag}: {m}")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "right", "gaps"])
def test_layer_float32(bidirectional, mask_kind):
    g = torch.Generator().manual_seed(11)
    layer = make_layer(4, 8, 2, seed=3, dtype=torch.float32, bidirectional=bidirectional)
    u = torch.randn(3, 17, 4, generator=g)
    mask = make_mask(mask_kind, 3, 17, g)
    resets = torch.zeros(3, 17, dtype=torch.bool)
    resets[:, 6] = True
    scale = torch.rand(3, 17, generator=g) + 0.5
    kw = dict(mask=mask, resets=resets, step_scale=scale)
    want, want_final = expected(layer, u, **kw)
    for backend in ("reference", "parallel", "auto"):
        got = run(layer, backend, u, **kw)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, **F32_TOL)
    if not bidirectional:
        ys, s = stepwise(layer, u, **kw)
        torch.testing.assert_close(ys.double(), want, **F32_TOL)
        torch.testing.assert_close(s.to(torch.complex128), want_final, **F32_TOL)


# ---------------------------------------------------------------- mask and reset semantics, layer vs layer
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_right_padding_equals_unpadded_sequences(bidirectional, discretization):
    layer = make_layer(3, 8, seed=4, bidirectional=bidirectional, discretization=discretization,
                       scan_backend="parallel")  # fmt: skip
    lengths = [7, 3, 5, 1]
    L = max(lengths) + 2
    u = torch.randn(len(lengths), L, 3, dtype=torch.float64)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    u_garbage = u.masked_fill(~mask[..., None], 1e3)  # padded inputs must not leak anywhere
    scale = torch.rand(len(lengths), L, dtype=torch.float64) + 0.5
    for inp in (u, u_garbage):
        if bidirectional:
            y = layer(inp, mask=mask, step_scale=scale)
        else:
            y, final = layer(inp, mask=mask, step_scale=scale, return_state=True)
        assert torch.all(y[~mask] == 0)
        for b, n in enumerate(lengths):
            alone = layer(u[b : b + 1, :n], step_scale=scale[b : b + 1, :n], return_state=not bidirectional)
            if not bidirectional:
                alone, alone_final = alone
                torch.testing.assert_close(final[b], alone_final[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(y[b, :n], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gaps_equal_sequence_with_masked_steps_removed(bidirectional):
    layer = make_layer(3, 8, seed=5, bidirectional=bidirectional, scan_backend="parallel")
    B, L = 3, 10
    u = torch.randn(B, L, 3, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, [0, 3, 4]] = False
    mask[1, [2, 9]] = False
    mask[2, [1, 5, 7, 8]] = False
    for scale in (None, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)):
        out = layer(u, mask=mask, step_scale=scale, **({} if bidirectional else {"return_state": True}))
        y, final = (out, None) if bidirectional else out
        assert torch.all(y[~mask] == 0)
        for b in range(B):
            keep = mask[b].nonzero()[:, 0]
            s = None if scale is None else scale[b : b + 1]
            alone = layer(u[b : b + 1, keep], step_scale=s, **({} if bidirectional else {"return_state": True}))
            if not bidirectional:
                alone, alone_final = alone
                torch.testing.assert_close(final[b], alone_final[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(y[b, keep], alone[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_resets_equal_separate_episodes(bidirectional):
    layer = make_layer(3, 8, seed=6, bidirectional=bidirectional, scan_backend="parallel")
    u = torch.randn(2, 12, 3, dtype=torch.float64)
    resets = torch.zeros(2, 12, dtype=torch.bool)
    resets[0, [0, 4, 5]] = True
    resets[1, [9]] = True
    y = layer(u, resets=resets)
    for b, bounds in ((0, [0, 4, 5, 12]), (1, [0, 9, 12])):
        pieces = [layer(u[b : b + 1, s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
        torch.testing.assert_close(y[b : b + 1], torch.cat(pieces, 1), rtol=1e-12, atol=1e-12)
    if not bidirectional:  # a reset also drops a carried state
        state = torch.randn(2, layer.num_states, dtype=torch.complex128)
        torch.testing.assert_close(layer(u, resets=resets, state=state)[0], y[0], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(layer(u, resets=resets, state=state)[1], y[1])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mask_kind", ["right", "gaps"])
def test_resets_at_masked_steps_are_removed_with_the_step(bidirectional, mask_kind):
    """Removing the masked steps removes their reset flags too (for outputs and final state)."""
    layer = make_layer(3, 8, seed=13, bidirectional=bidirectional, scan_backend="parallel")
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    if mask_kind == "right":
        mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    else:
        mask = torch.tensor([[1, 0, 1, 1, 0, 1, 0], [0, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    resets = ~mask  # every masked step carries a reset flag
    resets[1, 4] = True  # and one valid step
    uni = {} if bidirectional else {"return_state": True}
    out = layer(u, mask=mask, resets=resets, **uni)
    y, final = (out, None) if bidirectional else out
    for b in range(2):
        keep = mask[b].nonzero()[:, 0]
        alone = layer(u[b : b + 1, keep], resets=resets[b : b + 1, keep], **uni)
        if not bidirectional:
            alone, alone_final = alone
            torch.testing.assert_close(final[b], alone_final[0], rtol=1e-12, atol=1e-12)
            assert alone_final.abs().max() > 1e-3  # the final state is not trivially 0
        torch.testing.assert_close(y[b, keep], alone[0], rtol=1e-12, atol=1e-12)


def test_step_cache_follows_parameters_and_options():
    """`step` caches its operator at inference: it must see every change forward sees."""
    layer = make_layer(3, 8, seed=14, scan_backend="parallel").eval()
    u = torch.randn(2, 3, dtype=torch.float64)

    def check():
        with torch.no_grad():
            y, s = layer.step(u)
            torch.testing.assert_close(y, layer(u[:, None])[:, 0], rtol=1e-12, atol=1e-12)
        return y

    first = check()
    assert layer._step_cache is not None  # the cached path is the one under test
    with torch.no_grad():
        layer.log_step.mul_(0.5)  # in place
    second = check()
    assert not torch.allclose(first, second)
    layer.discretization = "bilinear"
    check()
    with torch.no_grad():
        layer.Lambda_re[0] = 0.3
    layer.clip_eigs = True
    check()
    layer.step_rescale = 2.0
    check()
    layer.load_state_dict({k: v + 0.01 for k, v in layer.state_dict().items()})
    check()
    # a fused optimizer writes without a version bump; the train()/eval() round trip drops the cache
    opt = torch.optim.AdamW(layer.parameters(), lr=0.05, fused=True)
    layer.train()
    layer(u[:, None]).sum().backward()
    opt.step()
    layer.eval()
    check()
    with torch.no_grad():  # no cache in training mode (parameters may change invisibly)
        layer.train()
        layer.step(u)
        assert layer._step_cache is None


def test_step_cache_follows_new_storage_and_dtype():
    """`.data = ...` and `.float()`/`.double()` keep each Parameter object and give it new
    storage (no version bump): the cached operator must follow them."""
    layer = make_layer(3, 8, seed=15, scan_backend="parallel").eval()
    u = torch.randn(2, 3, dtype=torch.float64)

    def check(u):
        with torch.no_grad():
            y, _ = layer.step(u)
            assert layer._step_cache is not None and y.dtype == u.dtype
            torch.testing.assert_close(y, layer(u[:, None])[:, 0], rtol=1e-5, atol=1e-5)
        return y

    first = check(u)
    layer.log_step.data = layer.log_step.detach() * 0.5
    assert not torch.allclose(check(u), first)
    layer.float()
    check(u.float())
    layer.double()
    check(u)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", ["reference", "parallel", "auto"])
@pytest.mark.parametrize(
    "case",
    # "scalar": a time-invariant Λ̄, which "auto" runs through scan.cpu_layer (one fused Function)
    ["uni_zoh_right_BL", "bi_bilinear_gaps", "uni_full_resets_state", "uni_scalar_right_resets_state",
     "bi_scalar_right_resets"],
)
def test_gradcheck_layer(backend, case):
    conj_sym = case != "uni_full_resets_state"
    bidirectional = case.startswith("bi")
    layer = make_layer(2, 4, seed=7, conj_sym=conj_sym, bidirectional=bidirectional,
                       discretization="bilinear" if "bilinear" in case else "zoh",
                       scan_backend=backend)  # fmt: skip
    B, L = 2, 4
    g = torch.Generator().manual_seed(8)
    u = torch.randn(B, L, 2, dtype=torch.float64, generator=g)
    scale = torch.rand(B, L, dtype=torch.float64, generator=g) + 0.5
    mask = resets = state = None
    if "right" in case:
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    if "gaps" in case:
        mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    if "resets" in case:
        resets = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    names = [n for n, _ in layer.named_parameters()]
    inputs = [u, scale] + [p.detach() for p in layer.parameters()]
    if "state" in case:
        inputs.append(torch.randn(B, layer.num_states, dtype=torch.complex128, generator=g))
    inputs = [t.clone().requires_grad_() for t in inputs]

    if "scalar" in case:
        inputs[1] = 0.7  # gradcheck differentiates tensors only

    def f(u, scale, *rest):
        params = dict(zip(names, rest[: len(names)]))
        st = rest[len(names)] if len(rest) > len(names) else None
        return torch.func.functional_call(layer, params, (u,), dict(step_scale=scale, mask=mask, resets=resets,
                                                                    state=st))  # fmt: skip

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- edge sizes
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend", ["reference", "parallel", "auto"])
def test_length_one_and_batch_one(bidirectional, backend):
    layer = make_layer(3, 4, seed=9, bidirectional=bidirectional, scan_backend=backend)
    for B, L in ((1, 1), (1, 6), (4, 1)):
        u = torch.randn(B, L, 3, dtype=torch.float64)
        torch.testing.assert_close(layer(u), naive_ssm(layer, u)[0], rtol=1e-10, atol=1e-10)
        if not bidirectional:
            y, s = layer(u, return_state=True)
            torch.testing.assert_close(stepwise(layer, u)[0], y, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(s, naive_ssm(layer, u)[1], rtol=1e-10, atol=1e-10)
    mask = torch.tensor([[True], [False]])
    y = layer(torch.randn(2, 1, 3, dtype=torch.float64), mask=mask)
    assert torch.all(y[1] == 0)


def test_fully_masked_row_keeps_carried_state():
    layer = make_layer(3, 4, seed=10, scan_backend="parallel")
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    state = torch.randn(2, layer.num_states, dtype=torch.complex128)
    for mask in (torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool),
                 torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)):  # fmt: skip
        y, final = layer(u, mask=mask, state=state, return_state=True)
        torch.testing.assert_close(final[1], state[1], rtol=0, atol=0)
        assert torch.all(y[1] == 0)


def test_clip_eigs_and_step_rescale_follow_naive():
    layer = make_layer(3, 8, seed=12, clip_eigs=True, step_rescale=2.5, scan_backend="parallel")
    with torch.no_grad():
        layer.Lambda_re[0] = 0.5  # unstable: clipping must apply
    u = torch.randn(2, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(u), naive_ssm(layer, u)[0], rtol=1e-10, atol=1e-10)
    assert layer.continuous_eigenvalues().real.max() <= -1e-4


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 24),
    H=st.integers(1, 5),
    half_block=st.integers(1, 3),
    J=st.integers(1, 3),
    conj_sym=st.booleans(),
    bidirectional=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_backends_and_step_equal(B, L, H, half_block, J, conj_sym, bidirectional, seed):
    layer = make_layer(H, 2 * half_block * J, J, seed=seed, conj_sym=conj_sym, bidirectional=bidirectional)
    u = torch.randn(B, L, H, dtype=torch.float64)
    want = run(layer, "reference", u)
    torch.testing.assert_close(run(layer, "parallel", u), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run(layer, "auto", u), want, rtol=1e-10, atol=1e-10)
    if not bidirectional:
        torch.testing.assert_close(stepwise(layer, u)[0], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale_kind", ["float", "BL", "BL_gaps"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_cpu_core_equals_the_separate_ops_with_gradients(scale_kind, bidirectional, dtype):
    """scan.cpu_layer (what "auto" runs on the CPU for a scalar or per-step step_scale)
    against the reference scan between the plain projections: outputs and every gradient,
    at a length across the kernels' blocks of time steps (cpu._BLOCK, irregular._BLOCK)."""
    B, L, H = 3, max(cpu._BLOCK, irregular._BLOCK) + 5, 5
    g = torch.Generator().manual_seed(21 + bidirectional)
    layer = make_layer(H, 8, 2, seed=4, dtype=dtype, bidirectional=bidirectional,
                       discretization="bilinear" if scale_kind == "BL_gaps" else "zoh")  # fmt: skip
    u = torch.randn(B, L, H, dtype=dtype, generator=g)
    mask = torch.arange(L)[None, :] < torch.tensor([L, 20, 7])[:, None]
    if scale_kind == "BL_gaps":
        mask &= torch.rand(B, L, generator=g) < 0.8
    step_scale = 1.3 if scale_kind == "float" else torch.rand(B, L, dtype=dtype, generator=g) + 0.5
    resets = torch.rand(B, L, generator=g) < 0.1
    state = None if bidirectional else torch.randn(B, layer.num_states, dtype=layer.complex_dtype, generator=g)
    grad_y = torch.randn(B, L, H, dtype=dtype, generator=g)
    results = {}
    for backend in ("reference", "auto"):
        layer.zero_grad()
        leaves = [u.clone().requires_grad_()] + ([state.clone().requires_grad_()] if state is not None else [])
        layer.scan_backend = backend
        if scale_kind != "float":
            leaves.append(step_scale.clone().requires_grad_())
        st = leaves[1] if state is not None else None
        scale = leaves[-1] if scale_kind != "float" else step_scale
        y = layer(leaves[0], mask=mask, resets=resets, state=st, step_scale=scale)
        y.backward(grad_y)
        results[backend] = [y] + [t.grad for t in leaves] + [p.grad.clone() for p in layer.parameters()]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    names = ["y", "u", *(["state"] if state is not None else []), *(["step_scale"] if scale_kind != "float" else []),
             *(n for n, _ in layer.named_parameters())]  # fmt: skip
    for name, want, got in zip(names, results["reference"], results["auto"], strict=True):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rows", [1, 15, 17, 1000])  # fewer rows than chunks, and many per chunk
def test_fused_cpu_core_skip_backward_equals_its_reference(dtype, rows):
    """The D-term's backward kernel (d D = Σ grad_y ⊙ u, d u = grad_y ⊙ D) against torch ops."""
    g = torch.Generator().manual_seed(rows)
    grad_y = torch.randn(1, rows, 6, dtype=dtype, generator=g)
    u = torch.randn(1, 6, rows, dtype=dtype, generator=g).transpose(1, 2)  # not contiguous
    d = torch.randn(6, dtype=dtype, generator=g)
    d_d, d_u = cpu_layer._skip_backward(grad_y, u, d, True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_d, (grad_y * u).sum((0, 1)), **tol)
    torch.testing.assert_close(d_u, grad_y * d, rtol=0, atol=0)
    assert d_d.dtype == dtype
    assert cpu_layer._skip_backward(grad_y, u, d, False)[1] is None


def test_fused_cpu_core_under_inference_mode_and_torch_compile():
    layer = make_layer(4, 8, 2, seed=2, dtype=torch.float32)
    u = torch.randn(2, 11, 4)
    want = layer(u)
    with torch.inference_mode():
        torch.testing.assert_close(layer(u), want)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(u), want, rtol=1e-5, atol=1e-6)
