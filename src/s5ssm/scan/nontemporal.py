"""Non-temporal stores for the numba kernels: output rows written straight to memory.

A plain store to a cache line that is not in cache first reads that line (write-allocate),
so a kernel that reads one stream and writes another moves three streams over the memory
bus: the input, the output's old contents, and the output. A non-temporal store writes
whole lines through write-combining buffers and skips the read, which leaves two: a
memory-bound scan can then beat torch's `copy_` of the same bytes, which stores plainly
(`s5ssm bench --sections scan` times both).

The price: a row written this way is not in cache afterwards, so a consumer that would
have found it there (a small output, read right after) reads it from memory. Kernels
stream only outputs of at least `STREAM_BYTES`, a quarter of the last-level cache.

    store_row(dst, start, src, stream)   dst[start : start + len(src)] = src
                                          (stream=False is the plain loop: the reference)
    stream_step(x, u, o, pairs, reset)   one step of the scan on interleaved rows, x = u at
                                          a reset, else x = Λ̄ x + u; then o = x, streamed
                                          (the reference: cpu._step)
    drain()                              after a task's last streamed store: orders the
                                          stores before those of the threads that follow
                                          (sfence on x86)

LLVM turns the `!nontemporal` vector stores into the target's streaming stores
(vmovntps/vmovntpd on x86; a hint elsewhere). Only whole, 64-byte-aligned vectors are
streamed; the unaligned head and the tail of a row are plain stores.

stream_step is written as vectors, not left to LLVM's vectoriser: on (re, im) interleaved
rows that vectoriser splits and re-interleaves every operand with lane shuffles, while the
complex multiply-add needs only one in-lane swap, of x, and two multiply-adds:
    x' = a ⊙ x + b ⊙ swap(x) + u,   a = (Re λ, Re λ, ...),  b = (-Im λ, Im λ, ...)
(`pairs` holds a and b). It also writes o in the same pass as x.
"""

from __future__ import annotations

import contextlib
import os
import platform

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LINE = 64  # bytes per streamed vector: one cache line
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")  # numba compiles for this host


def _last_level_cache_bytes() -> int:
    """The largest cache size the OS reports (sysconf), or 32 MiB where it reports none."""
    sizes = []
    for name in ("SC_LEVEL4_CACHE_SIZE", "SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            sizes.append(os.sysconf(name))
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
            pass
    return max([s for s in sizes if s > 0], default=32 << 20)


# Outputs of at least this many bytes are streamed: a quarter of the last-level cache. A
# smaller output is read back from the cache by what follows the scan (the projection's
# GEMM), which streaming would send to memory instead.
STREAM_BYTES = _last_level_cache_bytes() // 4


def streams(nbytes: int) -> bool:
    """Whether a kernel should stream an output of nbytes (module docstring)."""
    return nbytes >= STREAM_BYTES


def _line_vector(context, element):
    """The LLVM vector type of one 64-byte line of a numba float type, and its width."""
    llvm = context.get_data_type(element)
    width = _LINE // context.get_abi_sizeof(llvm)
    return ir.VectorType(llvm, width), width


@contextlib.contextmanager
def _lines(builder, count, width):
    """A loop over count // width lines: yields the element offset of each line."""
    lines = builder.udiv(count, ir.Constant(count.type, width))
    with cgutils.for_range(builder, lines) as loop:
        yield builder.mul(loop.index, ir.Constant(loop.index.type, width))


def _data_at(context, builder, array_type, array, start):
    """A pointer to element `start` of a 1-d contiguous numba array."""
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [start])


def _vector_at(builder, base, offset, vector):
    """A pointer to the vector at base + offset elements."""
    return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())


def _store_streaming(builder, value, pointer):
    """A non-temporal store of a whole, 64-byte-aligned line."""
    store = builder.store(value, pointer, align=_LINE)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


@intrinsic
def _store_lines(typingctx, dst, start, src, src_start, count):
    """dst[start : start + count] = src[src_start : src_start + count], streamed. &dst[start]
    must be 64-byte aligned and count a multiple of the vector width (64 / itemsize); dst
    and src 1-d contiguous arrays of one float type."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype):
        return None
    sig = types.none(dst, start, src, src_start, count)

    def codegen(context, builder, signature, args):
        vector, width = _line_vector(context, signature.args[0].dtype)
        dst_ptr = _data_at(context, builder, signature.args[0], args[0], args[1])
        src_ptr = _data_at(context, builder, signature.args[2], args[2], args[3])
        with _lines(builder, args[4], width) as offset:
            value = builder.load(_vector_at(builder, src_ptr, offset, vector), align=1)
            _store_streaming(builder, value, _vector_at(builder, dst_ptr, offset, vector))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _step_lines(typingctx, x, u, o, a, b, start, count):
    """For j in [start, start + count): x[j] = a[j] x[j] + b[j] x[j ^ 1] + u[j], and o[j] =
    x[j] streamed (module docstring). &o[start] must be 64-byte aligned, start even and
    count a multiple of the vector width; 1-d contiguous arrays of one float type."""
    arrays = (x, u, o, a, b)
    if not all(isinstance(t, types.Array) and t.dtype == x.dtype for t in arrays):
        return None
    sig = types.none(x, u, o, a, b, start, count)

    def codegen(context, builder, signature, args):
        vector, width = _line_vector(context, signature.args[0].dtype)
        bases = [_data_at(context, builder, signature.args[i], args[i], args[5]) for i in range(5)]
        swap = ir.Constant(ir.VectorType(ir.IntType(32), width), [i ^ 1 for i in range(width)])
        # fmuladd: a fused multiply-add where the target has one, else a multiply and an add
        # (llvm.fma would become a slow exact libm call on such a target)
        muladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{width}f{_LINE * 8 // width}"
        )
        with _lines(builder, args[6], width) as offset:
            x_p, u_p, o_p, a_p, b_p = (_vector_at(builder, base, offset, vector) for base in bases)
            x_v = builder.load(x_p, align=1)
            swapped = builder.shuffle_vector(x_v, x_v, swap)
            partial = builder.call(muladd, [builder.load(b_p, align=1), swapped, builder.load(u_p, align=1)])
            new = builder.call(muladd, [builder.load(a_p, align=1), x_v, partial])
            builder.store(new, x_p, align=1)
            _store_streaming(builder, new, o_p)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def drain(typingctx):
    """Call once at the end of each task that streamed, so its stores are visible to
    whichever thread reads the output next. On x86 that takes an sfence: streamed stores
    are weakly ordered, and LLVM lowers a seq_cst fence there to a locked instruction
    (`lock or`), which is not documented to order them. Elsewhere, a seq_cst fence."""

    def codegen(context, builder, signature, args):
        if _X86:
            no_args = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, no_args, "llvm.x86.sse.sfence"), [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@numba.njit(inline="always")
def _aligned_span(dst, start, n, stream):  # pragma: no cover - compiled
    """(head, lines): dst[start : start + head] precedes the first 64-byte-aligned line,
    and the lines dst[start + head : start + head + lines] are whole; (n, 0) if not stream
    or if dst's elements are not aligned to their size."""
    if not stream:
        return n, 0
    size = dst.itemsize
    address = dst.ctypes.data + start * size
    if address % size != 0:
        return n, 0
    head = min(n, ((_LINE - address % _LINE) % _LINE) // size)
    width = _LINE // size
    return head, (n - head) // width * width


@numba.njit(inline="always")
def store_row(dst, start, src, stream):  # pragma: no cover - compiled
    """dst[start : start + len(src)] = src (1-d contiguous float arrays of one dtype); with
    stream, the 64-byte-aligned lines in between go as non-temporal stores."""
    n = src.shape[0]
    head, lines = _aligned_span(dst, start, n, stream)
    for j in range(head):
        dst[start + j] = src[j]
    if lines > 0:
        _store_lines(dst, start + head, src, head, lines)
    for j in range(head + lines, n):
        dst[start + j] = src[j]


@numba.njit(inline="always")
def lambda_pairs(row, a, b):  # pragma: no cover - compiled
    """Λ̄'s row (2n,), (re, im) interleaved, as stream_step's pairs: a = (Re λ, Re λ) and
    b = (-Im λ, Im λ) per element, (2n,) each."""
    for j in range(row.shape[0] // 2):
        a[2 * j] = row[2 * j]
        a[2 * j + 1] = row[2 * j]
        b[2 * j] = -row[2 * j + 1]
        b[2 * j + 1] = row[2 * j + 1]


@numba.njit(inline="always")
def stream_step(x, u, o, a, b, reset):  # pragma: no cover - compiled
    """x = u at a reset, else x = Λ̄ x + u, on rows (2n,) with (re, im) interleaved, Λ̄ as
    pairs a, b (lambda_pairs); o = x, its aligned lines streamed. The head and tail of the
    row (and a row whose complex elements are misaligned) run as scalar code."""
    n = x.shape[0]
    if reset:
        for j in range(n):
            x[j] = u[j]
        store_row(o, 0, x, True)
        return
    head, lines = _aligned_span(o, 0, n, True)
    if head % 2 == 1:  # a complex element would straddle the first line: no vectors
        head, lines = n, 0
    for j in range(0, head, 2):
        _scalar_step(x, u, o, a, b, j)
    if lines > 0:
        _step_lines(x, u, o, a, b, head, lines)
    for j in range(head + lines, n, 2):
        _scalar_step(x, u, o, a, b, j)


@numba.njit(inline="always")
def _scalar_step(x, u, o, a, b, j):  # pragma: no cover - compiled
    """stream_step on the complex element at floats j, j + 1, with plain stores."""
    re = a[j] * x[j] + b[j] * x[j + 1] + u[j]
    im = a[j + 1] * x[j + 1] + b[j + 1] * x[j] + u[j + 1]
    x[j] = re
    x[j + 1] = im
    o[j] = re
    o[j + 1] = im
