"""Non-temporal row stores (scan/nontemporal.py) against plain slice assignment.

The kernels that use them are tested streamed in test_scan_cpu.py (the `stores` fixture)."""

import numba
import numpy as np
import pytest

from s5ssm.scan import nontemporal


@numba.njit
def _store(dst, start, src, stream):
    nontemporal.store_row(dst, start, src, stream)
    nontemporal.drain()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stream", [False, True])
def test_rows_at_every_alignment_and_length(dtype, stream):
    """Every start within a line and lengths around whole lines: exactly dst[start:start+n]
    changes, to src, whichever part goes as aligned lines."""
    width = 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(0)
    for start in range(width + 1):
        for n in [0, 1, width - 1, width, width + 1, 3 * width + 5]:
            dst = rng.standard_normal(start + n + 2 * width).astype(dtype)
            src = rng.standard_normal(n).astype(dtype)
            want = dst.copy()
            want[start : start + n] = src
            _store(dst, start, src, stream)
            np.testing.assert_array_equal(dst, want)


def test_rows_of_a_strided_parent_array():
    """A kernel's row is a slice of a 3-d array (out[b, k, lo:hi]): the address is the
    slice's, not the parent's."""
    out = np.zeros((2, 3, 37), dtype=np.float32)
    src = np.arange(20, dtype=np.float32) + 1
    for b in range(2):
        for k in range(3):
            _store(out[b, k, 7:27], 0, src, True)
    np.testing.assert_array_equal(out[:, :, 7:27], np.broadcast_to(src, (2, 3, 20)))
    assert not out[:, :, :7].any() and not out[:, :, 27:].any()


def test_only_outputs_past_the_threshold_are_streamed():
    assert nontemporal.streams(nontemporal.STREAM_BYTES)
    assert not nontemporal.streams(nontemporal.STREAM_BYTES - 1)
    assert nontemporal.STREAM_BYTES >= 1 << 20


@numba.njit
def _steps(x, u, o, lam_row, reset):
    a = np.empty_like(x)
    b = np.empty_like(x)
    nontemporal.lambda_pairs(lam_row, a, b)
    nontemporal.stream_step(x, u, o, a, b, reset)
    nontemporal.drain()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("reset", [False, True])
def test_stream_step_is_the_complex_multiply_add(dtype, reset):
    """x = Λ̄ x + u (or u at a reset) and o = x, against complex NumPy, for rows starting at
    every complex offset within a line and of lengths around whole lines."""
    per_line = 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(1)
    tol = 1e-6 if dtype == np.complex64 else 1e-14
    for start in range(per_line + 1):
        for n in [1, per_line - 1, per_line, 2 * per_line + 3, 5 * per_line]:
            draw = lambda m: (rng.standard_normal(m) + 1j * rng.standard_normal(m)).astype(dtype)  # noqa: E731
            lam, x, u = draw(n), draw(n), draw(n)
            out = draw(start + n + per_line)
            want_out = out.copy()
            want = u if reset else lam * x + u
            want_out[start : start + n] = want
            floats = lambda c: c.view(c.real.dtype)  # noqa: E731
            _steps(floats(x), floats(u), floats(out[start : start + n]), floats(lam), reset)
            np.testing.assert_allclose(x, want, rtol=tol, atol=tol)
            np.testing.assert_allclose(out, want_out, rtol=tol, atol=tol)


def test_cache_size_falls_back_where_the_os_reports_none(monkeypatch):
    """No sysconf (Windows), unknown names (macOS) or zeros (some VMs): 32 MiB is assumed."""
    monkeypatch.delattr(nontemporal.os, "sysconf")
    assert nontemporal._last_level_cache_bytes() == 32 << 20
    monkeypatch.setattr(nontemporal.os, "sysconf", lambda name: 0, raising=False)
    assert nontemporal._last_level_cache_bytes() == 32 << 20
    sizes = {"SC_LEVEL2_CACHE_SIZE": 1 << 20, "SC_LEVEL3_CACHE_SIZE": 96 << 20}
    monkeypatch.setattr(nontemporal.os, "sysconf", lambda name: sizes.get(name, 0))
    assert nontemporal._last_level_cache_bytes() == 96 << 20


def test_the_threshold_is_read_at_each_call(monkeypatch):
    """README: setting STREAM_BYTES changes which outputs are streamed from the next call on."""
    monkeypatch.setattr(nontemporal, "STREAM_BYTES", 100)
    assert nontemporal.streams(100) and not nontemporal.streams(99)


@pytest.mark.skipif(not nontemporal._X86, reason="x86 assembly")
def test_streamed_rows_are_fenced_with_sfence():
    """The compiled kernel streams (vmovnt*) and ends with an sfence: a seq_cst fence alone
    compiles to `lock or` on x86, which is not documented to order streamed stores."""
    _store(np.zeros(64, np.float32), 0, np.ones(64, np.float32), True)
    asm = "\n".join(_store.inspect_asm().values())
    assert "vmovntps" in asm or "movntps" in asm
    assert "sfence" in asm
