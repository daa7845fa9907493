"""numba kernels of `fused`, and the walk the `packed` and `quantized` decoders share with the fused add
(`coded`); imported only where numba is installed. Each is compiled once and cached.

Arithmetic is float32: with `contract`, LLVM fuses base + α·Δ into one multiply-add (torch's add with
alpha does the same), and the per-call sums (a chunk or a block, about a million weights) stay float32.
"""

from __future__ import annotations

import numba
import numba.extending
import numpy as np
from llvmlite.binding import ffi as _llvm_ffi


def _llvm_lib_without_dunders() -> None:
    """Make llvmlite's `ffi.lib` answer `__dict__` and other dunders with AttributeError.

    It answers every attribute with a wrapped C function, `__dict__` included (its ctypes library has
    one), and vLLM's Triton-kernel scan (`vllm.triton_utils.dispatcher._rebind_kernels`) calls
    `vars(x).get(...)` on every module attribute when a worker starts: once numba is imported, a second
    vLLM engine started in the same process failed with "'_lib_fn_wrapper' object has no attribute 'get'".
    """
    wrapper = _llvm_ffi._lib_wrapper
    if getattr(wrapper, "_rvec_no_dunders", False):
        return
    lookup = wrapper.__getattr__

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return lookup(self, name)

    wrapper.__getattr__ = __getattr__
    wrapper._rvec_no_dunders = True


_llvm_lib_without_dunders()

BAD_VALUE = 8
# Reassociation lets LLVM vectorise the sums; NaN and Inf stay meaningful (no nnan / ninf).
_jit = numba.njit(nogil=True, cache=True, boundscheck=False, fastmath={"reassoc", "contract", "nsz", "arcp"})


@_jit
def _to_bf16(x):  # float32 → bf16 bits, round to nearest even (as torch casts)
    bits = np.uint32(np.float32(x).view(np.uint32))
    return np.uint16(np.uint32(bits + np.uint32(0x7FFF) + np.uint32((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@_jit
def _widen(bits):  # bf16 bits → float32
    return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)


def _as_float32(value):  # a delta element as float32: bf16 bits widened, a float32 as is
    raise NotImplementedError  # compiled only, through the overload below


@numba.extending.overload(_as_float32)
def _as_float32_impl(value):
    if isinstance(value, numba.types.Integer):
        return lambda value: _widen(value)
    return lambda value: np.float32(value)


@_jit
def dense(out, delta, alpha):
    """out ← bf16(out + α·delta) for bf16 bits `out` and bf16 bits (uint16) or float32 `delta`."""
    a = np.float32(alpha)
    err_sq, norm_sq, bad = np.float32(0.0), np.float32(0.0), 0
    for i in range(out.size):
        d = _as_float32(delta[i])
        exact = _widen(out[i]) + a * d  # one fused multiply-add, as torch's add with alpha (a·d has no other use)
        y = _to_bf16(exact)
        out[i] = y
        e = _widen(y) - exact
        err_sq += e * e
        norm_sq += d * d
        bad |= (y & 0x7F80) == 0x7F80
    return (BAD_VALUE if bad else 0), err_sq, norm_sq * a * a


@_jit
def _add_at(out, p, a, value):
    """out[p] ← bf16(out[p] + a·value); (rounding error², whether the sum left bf16's finite range)."""
    exact = _widen(out[p]) + a * value
    y = _to_bf16(exact)
    out[p] = y
    d = _widen(y) - exact
    return d * d, (y & 0x7F80) == 0x7F80


@_jit
def indexed(out, where, values, alpha):
    """out ← bf16(out + α·value) at each flat position of `where` (checked positions, in any order)."""
    a = np.float32(alpha)
    err_sq, norm_sq, bad = np.float32(0.0), np.float32(0.0), 0
    for i in range(where.size):
        p, value = where[i], values[i]
        if value != 0:
            sq, over = _add_at(out, p, a, value)
            err_sq += sq
            norm_sq += value * value
            bad |= over
    return (BAD_VALUE if bad else 0), err_sq, norm_sq * a * a


def _clear(out):  # a decoded block starts at zero; an add leaves the base as it is
    raise NotImplementedError  # compiled only, through the overload below


@numba.extending.overload(_clear, inline="always")
def _clear_impl(out):
    if out.dtype == numba.types.float32:
        def impl(out):
            out[:] = 0.0  # a memset, while the block is about to be in cache anyway
        return impl
    return lambda out: None


def _put(out, p, a, value, err_sq, norm_sq, bad):  # one entry into `out`, the add's sums carried along
    raise NotImplementedError  # compiled only, through the overload below


@numba.extending.overload(_put, inline="always")
def _put_impl(out, p, a, value, err_sq, norm_sq, bad):
    if out.dtype == numba.types.float32:  # decoding: the value itself
        def write(out, p, a, value, err_sq, norm_sq, bad):
            out[p] = value
            return err_sq, norm_sq, bad
        return write

    def add(out, p, a, value, err_sq, norm_sq, bad):  # bf16 bits: the fused add
        if value == 0:
            return err_sq, norm_sq, bad
        sq, over = _add_at(out, p, a, value)
        return err_sq + sq, norm_sq + value * value, bad | over
    return add


def _size(x):  # elements of an optional array: 0 for None
    raise NotImplementedError  # compiled only, through the overload below


@numba.extending.overload(_size, inline="always")
def _size_impl(x):
    if x is numba.types.none:
        return lambda x: 0
    return lambda x: x.size


def _at(x, i):  # element i of an optional array, read only where `_size` says it exists
    raise NotImplementedError  # compiled only, through the overload below


@numba.extending.overload(_at, inline="always")
def _at_impl(x, i):
    if x is numba.types.none:
        return lambda x, i: np.float32(0.0)
    return lambda x, i: x[i]


@_jit
def coded(gaps, codes, table, escaped, scales, cols, out, alpha):
    """Each coded entry of a `packed` block, or with per-row `scales` (one per row of `cols` elements) a
    `quantized` one, into `out`: float32 `out` is filled with the decoded block (zeros between the entries),
    bf16 bits (uint16) get out ← bf16(out + α·value).

    `escaped` None is an encoding without escaped values (code 255 is then one more code outside the
    codebook); `scales` None or empty, no scales. Each combination of types compiles once, without the code
    it does not need. Returns (status, error², ‖α·Δ‖²): a status other than 0 is a `packed` decoding status
    or BAD_VALUE; the sums are 0 for a decode.
    """
    n, n_codes, n_table, n_escaped, n_scales = out.size, codes.size, table.size, _size(escaped), _size(scales)
    a = np.float32(alpha)
    err_sq, norm_sq, bad = np.float32(0.0), np.float32(0.0), 0
    scaled = n_scales > 0
    if scaled and n_scales * cols != n:
        return 7, 0.0, 0.0
    e = 0
    if gaps.size == 0 and n_codes > 0 and not scaled:  # a code for every element (a block without entries has neither)
        if n_codes != n:
            return 7, 0.0, 0.0
        for p in range(n):  # each branch puts its own value: one put of either value costs this loop 5 %
            c = codes[p]
            if c < n_table:
                err_sq, norm_sq, bad = _put(out, p, a, table[c], err_sq, norm_sq, bad)
            elif c == 255 and e < n_escaped:
                err_sq, norm_sq, bad = _put(out, p, a, _at(escaped, e), err_sq, norm_sq, bad)
                e += 1
            else:
                return (4 if c == 255 and escaped is not None else 3), 0.0, 0.0
        k = n
    else:
        _clear(out)
        p, k, row, row_end = -1, 0, 0, cols
        for i in range(gaps.size):
            g = gaps[i]
            if g == 0:
                p += 255
                continue
            p += g
            if p >= n:
                return 1, 0.0, 0.0
            if k >= n_codes:
                return 2, 0.0, 0.0
            c = codes[k]
            k += 1
            if c < n_table:
                value = table[c]
            elif c == 255 and e < n_escaped:
                value = _at(escaped, e)
                e += 1
            else:
                return (4 if c == 255 and escaped is not None else 3), 0.0, 0.0
            if scaled:
                while p >= row_end:
                    row += 1
                    row_end += cols
                value = value * _at(scales, row)
            err_sq, norm_sq, bad = _put(out, p, a, value, err_sq, norm_sq, bad)
    if k != n_codes:
        return 5, 0.0, 0.0
    if e != n_escaped:
        return 6, 0.0, 0.0
    return (BAD_VALUE if bad else 0), err_sq, norm_sq * a * a
