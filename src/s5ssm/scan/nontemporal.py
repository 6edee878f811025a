"""Non-temporal stores for the numba kernels: an output row written straight to memory.

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
    drain()                              after a task's last streamed store: orders the
                                          stores before those of the threads that follow

LLVM turns the `!nontemporal` vector stores into the target's streaming stores
(vmovntps/vmovntpd on x86; a hint elsewhere). Only whole, 64-byte-aligned vectors are
streamed; the unaligned head and the tail of a row are plain stores.
"""

from __future__ import annotations

import os

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LINE = 64  # bytes per streamed vector: one cache line


def _last_level_cache_bytes() -> int:
    """The largest cache size the OS reports (sysconf), or 32 MiB where it reports none."""
    sizes = []
    for name in ("SC_LEVEL4_CACHE_SIZE", "SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            sizes.append(os.sysconf(name))
        except (ValueError, OSError):
            pass
    return max([s for s in sizes if s > 0], default=32 << 20)


# Outputs of at least this many bytes are streamed. On the bench machine (32 MiB L3), a
# scan followed by a GEMM that reads its states was slower streamed for outputs of a few
# MiB and faster from about this size on (a throwaway A/B; figures in the commit message).
STREAM_BYTES = _last_level_cache_bytes() // 4


def streams(nbytes: int) -> bool:
    """Whether a kernel should stream an output of nbytes (module docstring)."""
    return nbytes >= STREAM_BYTES


@intrinsic
def _store_lines(typingctx, dst, start, src, src_start, count):
    """dst[start : start + count] = src[src_start : src_start + count] with non-temporal
    vector stores of 64 bytes. &dst[start] must be 64-byte aligned and count a multiple of
    the vector width (64 / itemsize); dst and src 1-d contiguous arrays of one float type."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype):
        return None
    sig = types.none(dst, start, src, src_start, count)

    def codegen(context, builder, signature, args):
        dst_arr = context.make_array(signature.args[0])(context, builder, args[0])
        src_arr = context.make_array(signature.args[2])(context, builder, args[2])
        element = context.get_data_type(signature.args[0].dtype)
        width = _LINE // context.get_abi_sizeof(element)
        vector = ir.VectorType(element, width).as_pointer()
        dst_ptr = builder.gep(dst_arr.data, [args[1]])
        src_ptr = builder.gep(src_arr.data, [args[3]])
        lines = builder.udiv(args[4], ir.Constant(args[4].type, width))
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, lines) as loop:
            offset = builder.mul(loop.index, ir.Constant(loop.index.type, width))
            value = builder.load(builder.bitcast(builder.gep(src_ptr, [offset]), vector), align=1)
            store = builder.store(value, builder.bitcast(builder.gep(dst_ptr, [offset]), vector), align=_LINE)
            store.set_metadata("nontemporal", nontemporal)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fence(typingctx):
    """A sequentially consistent fence (mfence on x86): it also orders streamed stores."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


@numba.njit(inline="always")
def store_row(dst, start, src, stream):  # pragma: no cover - compiled
    """dst[start : start + len(src)] = src (1-d contiguous float arrays of one dtype); with
    stream, the 64-byte-aligned lines in between go as non-temporal stores."""
    n = src.shape[0]
    head = n  # elements before the first aligned line: all of them unless streaming
    lines = 0
    if stream:
        size = dst.itemsize
        address = dst.ctypes.data + start * size
        if address % size == 0:
            head = min(n, ((_LINE - address % _LINE) % _LINE) // size)
            width = _LINE // size
            lines = (n - head) // width * width
    for j in range(head):
        dst[start + j] = src[j]
    if lines > 0:
        _store_lines(dst, start + head, src, head, lines)
    for j in range(head + lines, n):
        dst[start + j] = src[j]


@numba.njit(inline="always")
def drain():  # pragma: no cover - compiled
    """Call once at the end of each task that streamed: its stores are then visible to
    whichever thread reads the output next."""
    _fence()
