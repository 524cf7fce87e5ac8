"""SQ8: per-dimension scalar quantisation of float32 vectors to one byte per component.

Contract:

* ``train_sq8`` learns, per dimension, ``lo`` = the ``clip_percentile``-th and ``hi`` = the
  ``(100 - clip_percentile)``-th percentile of the sample (so outliers do not stretch the range) and
  ``scale = (hi - lo) / 255``.  A (near-)constant dimension gets a tiny positive scale
  (``max(|lo|, |hi|, 1) * 2**-20 / 255``) so every scale is > 0 and the value ``lo`` still decodes
  exactly to ``lo``.
* ``encode``: ``code = clip(rint((x - min) / scale), 0, 255)`` as uint8, computed in float32; values
  outside ``[min, min + 255 * scale]`` clamp to 0 / 255, ``+inf`` -> 255, ``-inf`` -> 0, NaN -> an
  unspecified code (the engine refuses non-finite vectors before they reach here).
* ``decode``: ``min + scale * code`` in float32.  For an in-range value the round-trip error is at
  most ``scale / 2`` (plus float32 rounding).
* ``SQ8Params.to_bytes`` is ``mins`` then ``scales``, each ``d`` little-endian float32
  (``8 * d`` bytes); ``from_bytes`` checks the length and that every scale is finite and > 0.

All functions are pure (no shared state) and safe to call from any thread; numpy releases the GIL
in the element-wise loops, so concurrent encodes use several cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drift_engine.errors import CorruptionError, DimensionMismatchError, InvalidArgumentError

_CONST_REL_SCALE = 2.0**-20 / 255.0
_CHUNK_ELEMS = 1 << 16  # float32 scratch of 256 KiB: stays in L2 while the ufuncs stream over it


@dataclass(frozen=True, eq=False)
class SQ8Params:
    """Per-dimension ``mins`` and ``scales`` (float32[d], read-only copies, scales > 0)."""

    mins: np.ndarray
    scales: np.ndarray

    def __post_init__(self) -> None:
        mins = np.array(self.mins, dtype=np.float32, copy=True)
        scales = np.array(self.scales, dtype=np.float32, copy=True)
        if mins.ndim != 1 or scales.shape != mins.shape or mins.size == 0:
            raise InvalidArgumentError(
                f"SQ8 params need 1-D mins and scales of equal non-zero length, got {mins.shape} and {scales.shape}"
            )
        if not np.all(np.isfinite(mins)):
            raise InvalidArgumentError("SQ8 mins must be finite")
        if not np.all(np.isfinite(scales) & (scales > 0)):
            raise InvalidArgumentError("SQ8 scales must be finite and > 0")
        mins.flags.writeable = False
        scales.flags.writeable = False
        object.__setattr__(self, "mins", mins)
        object.__setattr__(self, "scales", scales)

    @property
    def dim(self) -> int:
        return int(self.mins.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SQ8Params):
            return NotImplemented
        return np.array_equal(self.mins, other.mins) and np.array_equal(self.scales, other.scales)

    __hash__ = None  # type: ignore[assignment]

    def to_bytes(self) -> bytes:
        """``mins`` then ``scales`` as little-endian float32."""
        return self.mins.astype("<f4").tobytes() + self.scales.astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> SQ8Params:
        """Inverse of ``to_bytes``; a wrong length or an invalid scale is a ``CorruptionError``."""
        if dim <= 0:
            raise InvalidArgumentError(f"SQ8 params: dim must be > 0, got {dim}")
        if len(data) != 8 * dim:
            raise CorruptionError(f"SQ8 params: expected {8 * dim} bytes for dim {dim}, got {len(data)}")
        raw = np.frombuffer(data, dtype="<f4")
        try:
            return cls(mins=raw[:dim].astype(np.float32), scales=raw[dim:].astype(np.float32))
        except InvalidArgumentError as exc:
            raise CorruptionError(f"SQ8 params: stored values are invalid: {exc}") from exc


def train_sq8(sample: np.ndarray, clip_percentile: float = 0.1) -> SQ8Params:
    """Learn per-dimension ranges from ``sample`` (n, d); see the module docstring."""
    try:
        clip = float(clip_percentile)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"SQ8: clip_percentile must be a number, got {clip_percentile!r}") from exc
    if not 0.0 <= clip < 50.0:
        raise InvalidArgumentError(f"SQ8: clip_percentile must be in [0, 50), got {clip_percentile}")
    x = np.asarray(sample)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgumentError(f"SQ8: training sample must be a non-empty (n, d) array, got shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise InvalidArgumentError(f"SQ8: training sample must be numeric, got dtype {x.dtype}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidArgumentError("SQ8: training sample contains NaN or Inf")
    if clip == 0.0:  # the plain range: no sort needed
        lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    else:
        lo, hi = np.percentile(x, [clip, 100.0 - clip], axis=0).astype(np.float64)
    hi = np.maximum(hi, lo)
    floor = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0) * _CONST_REL_SCALE
    scales = np.maximum((hi - lo) / 255.0, floor)
    return SQ8Params(mins=lo.astype(np.float32), scales=scales.astype(np.float32))


def _check_dim(params: SQ8Params, arr: np.ndarray, what: str) -> None:
    if arr.ndim not in (1, 2) or arr.shape[-1] != params.dim:
        raise DimensionMismatchError(f"SQ8 {what}: expected shape (n, {params.dim}), got {arr.shape}")


def encode(params: SQ8Params, x: np.ndarray) -> np.ndarray:
    """(n, d) floats -> (n, d) uint8 codes (C-contiguous); a 1-D (d,) input gives (d,) codes."""
    x = np.asarray(x)
    _check_dim(params, x, "encode")
    if x.dtype.kind != "f":
        raise InvalidArgumentError(f"SQ8 encode: expected a float array, got dtype {x.dtype}")
    x2 = x.reshape(-1, params.dim)
    n, d = x2.shape
    out = np.empty((n, d), dtype=np.uint8)
    rows = max(1, _CHUNK_ELEMS // d)
    buf = np.empty((min(rows, n), d), dtype=np.float32)
    mins, scales = params.mins, params.scales
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            b = buf[: stop - start]
            np.subtract(x2[start:stop], mins, out=b, casting="same_kind")
            np.divide(b, scales, out=b)
            np.rint(b, out=b)
            np.clip(b, 0.0, 255.0, out=b)
            np.copyto(out[start:stop], b, casting="unsafe")
    return out.reshape(x.shape)


def decode(params: SQ8Params, codes: np.ndarray) -> np.ndarray:
    """uint8 codes (n, d) or (d,) -> float32 ``min + scale * code`` of the same shape."""
    c = np.asarray(codes)
    _check_dim(params, c, "decode")
    if c.dtype != np.uint8:
        raise InvalidArgumentError(f"SQ8 decode: expected uint8 codes, got dtype {c.dtype}")
    c2 = c.reshape(-1, params.dim)
    n, d = c2.shape
    out = np.empty((n, d), dtype=np.float32)
    rows = max(1, _CHUNK_ELEMS // d)
    for start in range(0, n, rows):
        o = out[start : start + rows]
        np.multiply(c2[start : start + rows], params.scales, out=o)
        o += params.mins
    return out.reshape(c.shape)
