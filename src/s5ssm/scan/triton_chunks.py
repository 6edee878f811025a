"""The chunked scan shared by the Triton kernels (triton_scan.py, triton_irregular.py).

A kernel runs y_i = a_i y_{i-1} + b_i (complex, per state) over the L steps of a sequence
in its processing order i = 0 .. L-1 (the time order of a forward scan, the reverse of it
for a reverse scan or an adjoint). The steps are cut into chunks of BLOCK_L, the states
into blocks of BLOCK_P; each program takes one chunk of one (sequence, state block), so a
sequence fills the GPU however small the batch:

    1. the chunk's tile (BLOCK_L, BLOCK_P) is scanned from a zero state with
       tl.associative_scan on pairs (A_i, Y_i), (a, b) • (a', b') = (a' a, a' b + b'):
       A_i = a_i ... a_0 of the chunk, Y_i its state from zero;
    2. the state entering the chunk, y_in, comes from the chunks before it (`chunk_carry`);
    3. y_i = Y_i + A_i y_in is written.

Step 2 is a decoupled look-back (Merrill and Garland, "Single-pass parallel prefix scan
with decoupled look-back", 2016): a chunk publishes its aggregate (A, Y of its last step,
status 1), then walks back over its predecessors, folding in their aggregates until it
finds one that has published its inclusive prefix (the state leaving it, status 2), or
the sequence's initial state before chunk 0; it then publishes its own prefix. Each input
is read once and each state written once: no (B, L, P) buffer beyond the output. Chunks
take their index from an atomic ticket, in the order they start, so every chunk waited
for has started before the waiter and publishes its aggregate without waiting itself: no
deadlock, whatever order the GPU schedules programs in. Triton's interpreter runs the
programs one after another, so there every predecessor is finished and its prefix
published; `publish_prefix=False` (tests) makes every chunk fold all the aggregates back
to the initial state instead.

The look-back's memory (`workspace`): int32 status (lanes·chunks + 1, the last one the
ticket counter), zeros before the launch; float (lanes, chunks, 3, 2, BLOCK_P): per chunk
A, Y and the prefix, (re, im) planes. A lane is one (sequence, state block).

Complex numbers are (re, im) pairs of float tensors: Triton has no complex type. Tensors
in memory are complex64/128 read as interleaved floats.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# Whether the kernels defined now run in Triton's interpreter (TRITON_INTERPRET=1), which
# takes CPU tensors; triton.jit reads the setting when a kernel is defined.
INTERPRETED = bool(triton.knobs.runtime.interpret)


def device(fn):
    """triton.jit for a function that kernels call. In the interpreter it stays a plain
    function, run with the kernel's triton.language: each call of an interpreted jit
    function patches triton.language anew (~2 ms), which made the kernels there ~5x slower.
    Their compiled form is what tests/test_scan_triton.py compiles for the GPU."""
    return fn if INTERPRETED else triton.jit(fn)


def workspace(lanes: int, chunks: int, block_p: int, real: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(status, data) for `chunk_carry`, see the module docstring."""
    status = torch.zeros(lanes * chunks + 1, dtype=torch.int32, device=device)
    data = torch.empty(lanes * chunks * 6 * block_p, dtype=real, device=device)
    return status, data


@device
def cmul(a_re, a_im, b_re, b_im):
    """(a · b) as (re, im)."""
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


@triton.jit
def _combine(a1_re, a1_im, y1_re, y1_im, a2_re, a2_im, y2_re, y2_im):
    """(a1, y1) then (a2, y2): y -> a2 (a1 y + y1) + y2 = (a2 a1) y + (a2 y1 + y2)."""
    a_re, a_im = cmul(a2_re, a2_im, a1_re, a1_im)
    y_re, y_im = cmul(a2_re, a2_im, y1_re, y1_im)
    return a_re, a_im, y_re + y2_re, y_im + y2_im


@device
def load_complex(ptr, offsets, mask):
    """The complex elements at `offsets` (in complex elements) of interleaved floats `ptr`,
    as (re, im) tensors of offsets' shape; 0 where not mask."""
    pair = tl.arange(0, 2)
    both = tl.load(ptr + tl.expand_dims(offsets * 2, -1) + pair, mask=tl.expand_dims(mask, -1), other=0.0)
    return tl.split(both)


@device
def store_complex(ptr, offsets, re, im, mask):
    """Write (re, im) to the complex elements at `offsets` of interleaved floats `ptr`."""
    pair = tl.arange(0, 2)
    tl.store(ptr + tl.expand_dims(offsets * 2, -1) + pair, tl.join(re, im), mask=tl.expand_dims(mask, -1))


@device
def tile(status_ptr, lanes, chunks, L, P, DESCENDING: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's tile, by a ticket taken in the order programs start (module
    docstring): (lane, chunk, b, p, k, rows, rows_ok, cols_ok) with b the sequence (int64),
    p its states (BLOCK_P,), k the chunk's steps (BLOCK_L,) in processing order (from the
    last step back when DESCENDING), rows how many of them are < L, rows_ok and cols_ok
    which steps and states are valid."""
    number = tl.atomic_add(status_ptr + lanes * chunks, 1)
    lane, chunk = number % lanes, number // lanes
    blocks = tl.cdiv(P, BLOCK_P)
    b = (lane // blocks).to(tl.int64)
    p = (lane % blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    pos = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
    k = L - 1 - pos if DESCENDING else pos
    return lane, chunk, b, p, k, tl.minimum(BLOCK_L, L - chunk * BLOCK_L), pos < L, p < P


@device
def last_row(x, rows):
    """Row `rows - 1` of a (BLOCK_L, BLOCK_P) tile, (BLOCK_P,)."""
    i = tl.arange(0, x.shape[0])
    return tl.sum(tl.where((i == rows - 1)[:, None], x, 0.0), axis=0)


@device
def _store_pair(data_ptr, slot, re, im, BLOCK_P: tl.constexpr):
    """Store (re, im) (BLOCK_P,) into `slot` (0: A, 1: Y, 2: prefix) of a chunk's data."""
    p = tl.arange(0, BLOCK_P)
    tl.store(data_ptr + 2 * slot * BLOCK_P + p, re)
    tl.store(data_ptr + (2 * slot + 1) * BLOCK_P + p, im)


@device
def _release(status_ptr, value):
    """Set a chunk's status once its data is stored; the barrier orders every thread's
    stores before the release."""
    tl.debug_barrier()
    tl.atomic_xchg(status_ptr, value, sem="release")


@device
def chunk_carry(status_ptr, data_ptr, lane, chunk, chunks, agg_a_re, agg_a_im, agg_y_re, agg_y_im, y0_re, y0_im,
                PUBLISH_PREFIX: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """The state entering `chunk` of `lane` (BLOCK_P,) by decoupled look-back (module
    docstring). agg: the chunk's aggregate (A, Y of its last step); y0: the state entering
    chunk 0."""
    own = lane * chunks + chunk
    _store_pair(data_ptr + own * 6 * BLOCK_P, 0, agg_a_re, agg_a_im, BLOCK_P)
    _store_pair(data_ptr + own * 6 * BLOCK_P, 1, agg_y_re, agg_y_im, BLOCK_P)
    _release(status_ptr + own, 1)
    p = tl.arange(0, BLOCK_P)
    # (acc_a, acc_y): the chunks folded so far, as one map y -> acc_a y + acc_y
    acc_a_re = tl.full((BLOCK_P,), 1.0, agg_a_re.dtype)
    acc_a_im = tl.zeros((BLOCK_P,), agg_a_re.dtype)
    acc_y_re = tl.zeros((BLOCK_P,), agg_a_re.dtype)
    acc_y_im = tl.zeros((BLOCK_P,), agg_a_re.dtype)
    start_re, start_im = y0_re, y0_im  # the state the folded chunks start from
    j = chunk - 1
    while j >= 0:
        status = tl.atomic_add(status_ptr + lane * chunks + j, 0, sem="acquire")
        data = data_ptr + (lane * chunks + j) * 6 * BLOCK_P
        if status == 2:
            start_re = tl.load(data + 4 * BLOCK_P + p, cache_modifier=".cg")
            start_im = tl.load(data + 5 * BLOCK_P + p, cache_modifier=".cg")
            j = -1
        elif status == 1:
            a_re = tl.load(data + p, cache_modifier=".cg")
            a_im = tl.load(data + BLOCK_P + p, cache_modifier=".cg")
            y_re = tl.load(data + 2 * BLOCK_P + p, cache_modifier=".cg")
            y_im = tl.load(data + 3 * BLOCK_P + p, cache_modifier=".cg")
            # chunk j runs before the folded ones: (a, y) then (acc_a, acc_y)
            acc_a_re, acc_a_im, acc_y_re, acc_y_im = _combine(a_re, a_im, y_re, y_im, acc_a_re, acc_a_im, acc_y_re,
                                                              acc_y_im)  # fmt: skip
            j -= 1
        # status 0: chunk j has started but not published yet; read again
    carry_re, carry_im = cmul(acc_a_re, acc_a_im, start_re, start_im)
    carry_re += acc_y_re
    carry_im += acc_y_im
    if PUBLISH_PREFIX:
        out_re, out_im = cmul(agg_a_re, agg_a_im, carry_re, carry_im)
        _store_pair(data_ptr + own * 6 * BLOCK_P, 2, out_re + agg_y_re, out_im + agg_y_im, BLOCK_P)
        _release(status_ptr + own, 2)
    return carry_re, carry_im


@device
def scan_tile(a_re, a_im, b_re, b_im, rows, status_ptr, data_ptr, lane, chunk, chunks, y0_re, y0_im,
              PUBLISH_PREFIX: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """The states (re, im) of one chunk's tile (BLOCK_L, BLOCK_P) of y_i = a_i y_{i-1} + b_i,
    its first `rows` rows valid; y0 (BLOCK_P,): the state entering chunk 0."""
    cum_a_re, cum_a_im, y_re, y_im = tl.associative_scan((a_re, a_im, b_re, b_im), 0, _combine)
    carry_re, carry_im = chunk_carry(status_ptr, data_ptr, lane, chunk, chunks, last_row(cum_a_re, rows),
                                     last_row(cum_a_im, rows), last_row(y_re, rows), last_row(y_im, rows), y0_re,
                                     y0_im, PUBLISH_PREFIX, BLOCK_P)  # fmt: skip
    fix_re, fix_im = cmul(cum_a_re, cum_a_im, carry_re[None, :], carry_im[None, :])
    return y_re + fix_re, y_im + fix_im


# ---------------------------------------------------------------------------- host side
# Tile sizes and warps per program. With these, ptxas reports no register spills for any
# kernel on sm_80 (tests/test_scan_triton.py); they are not yet tuned on a GPU.
BLOCK_L = 64  # steps per chunk
BLOCK_P = 32  # states per block, at most (fewer for a smaller P)
WARPS = 8


class Grid:
    """The launch geometry of a (B, L, P) scan: lanes (sequence, state block) x chunks,
    one program each, and the look-back's workspace on `device`."""

    def __init__(self, batch: int, length: int, size: int, real: torch.dtype, device) -> None:
        self.block_l = BLOCK_L
        self.block_p = min(BLOCK_P, triton.next_power_of_2(size))
        self.lanes = batch * triton.cdiv(size, self.block_p)
        self.chunks = triton.cdiv(length, self.block_l)
        self.programs = (self.lanes * self.chunks,)
        self.options = dict(BLOCK_L=self.block_l, BLOCK_P=self.block_p, PUBLISH_PREFIX=PUBLISH_PREFIX, num_warps=WARPS)
        self.status, self.data = workspace(self.lanes, self.chunks, self.block_p, real, device)


PUBLISH_PREFIX = True  # False: every chunk folds all aggregates before it (tests; module docstring)


def floats(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor's values as a contiguous float tensor (..., 2), (re, im) interleaved
    (a copy if t is strided or carries a lazy conjugate or negative bit)."""
    return torch.view_as_real(t.resolve_conj().resolve_neg().contiguous())


def flags(resets: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """The resets (B, L) as bytes for a kernel; `fallback` (never read) when there are none."""
    return fallback if resets is None else resets.contiguous().view(torch.uint8)


def initial(initial_state: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The initial state (B, P) as floats (floats()); zeros if None. like: complex (B, L, P)."""
    if initial_state is None:
        return torch.zeros(like.shape[0], like.shape[2], 2, dtype=like.real.dtype, device=like.device)
    return floats(initial_state)


def runs_on(device: torch.device) -> bool:
    """Whether the kernels run on `device`: CUDA, or the CPU in the interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and INTERPRETED)
