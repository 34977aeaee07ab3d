"""Observers: statistics of a tensor collected over calibration batches, and the clipping
range they choose. Memory per tensor is fixed (a few scalars, or one histogram of ``bins``
counts), whatever the number of samples.

* :class:`MinMaxObserver` - exact running min and max.
* :class:`PercentileObserver` - the ``p``-th percentile of |x| (symmetric) or the
  ``(100-p)``-th / ``p``-th percentiles (asymmetric), read off a :class:`StreamingHistogram`
  with linear interpolation inside a bin.
* :class:`EntropyObserver` - TensorRT's entropy calibration on a histogram of |x|: the threshold T that
  minimises KL(P || Q) between the clipped reference distribution P (histogram of |x| up to T,
  the mass beyond T added to the last bin) and its quantized version Q (T's bins merged into
  the number of quantization levels, each level's mass spread over its non-empty bins).
* :class:`MSEObserver` - the range ``alpha * [lo, hi]`` minimising the expected squared error
  ``sum_bins count * (step^2 / 12 if inside else (|c| - clip)^2)`` (rounding noise of a
  uniform quantizer inside the range, clipping error outside), alpha on a grid.

:class:`StreamingHistogram` bins values on a lattice ``[j*w, (j+1)*w)`` with a fixed number of
bins; when new data falls outside the window the bin width doubles (pairs of bins merge
exactly, ``floor(j / 2)``) until it fits, and the window slides. Doubling a float is exact and
``floor(x / 2w) == floor(floor(x / w) / 2)``, so the streamed histogram equals the one-shot
histogram of all the data on the final lattice, bin for bin (a test checks this).

:func:`mse_weight_amax` chooses per-channel clipping for weights (known tensors, no
histogram): the ``alpha * max|w|`` minimising the exact squared error of fake quantization.
"""

from __future__ import annotations

import math

import numpy as np

from . import qparams

__all__ = ["Observer", "MinMaxObserver", "StreamingHistogram", "HistogramObserver",
           "PercentileObserver", "EntropyObserver", "MSEObserver", "make_observer",
           "OBSERVERS", "mse_weight_amax"]

DEFAULT_BINS = 2048


class Observer:
    """Base class: ``update(x)`` with each batch, then ``compute_range(bits, symmetric)``."""

    name = ""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        finite = x[np.isfinite(x)] if not np.all(np.isfinite(x)) else x
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += int(finite.size)
        self._update(finite)

    def _update(self, x: np.ndarray) -> None:  # histogram observers override
        pass

    @property
    def empty(self) -> bool:
        return self.count == 0

    def minmax(self) -> tuple[float, float]:
        return (0.0, 0.0) if self.empty else (self.min, self.max)

    def compute_range(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        """The clipping range [lo, hi] to quantize with (symmetric: lo == -hi)."""
        lo, hi = self.minmax()
        if symmetric:
            a = max(abs(lo), abs(hi))
            return -a, a
        return lo, hi


class MinMaxObserver(Observer):
    """The exact min and max seen."""

    name = "minmax"


class StreamingHistogram:
    """Fixed-size histogram with range growth by exact rebinning (see the module docstring).

    ``counts[i]`` counts values in ``[(j0 + i) * width, (j0 + i + 1) * width)``.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 16:
            raise ValueError("a histogram needs at least 16 bins")
        self.bins = bins
        self.width = 0.0
        self.j0 = 0
        self.counts = np.zeros(bins, np.float64)
        self.lo_j = self.hi_j = None  # occupied lattice indices (inclusive)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.lo_j is None:
            # (a floor on the width relative to the magnitude keeps lattice indices small)
            span = max(hi - lo, 1e-7 * max(abs(hi), abs(lo)), 1e-30)
            self.width = span / (self.bins - 2)
        # lattice indices of the extremes as Python ints (no overflow however far they reach)
        lo_j, hi_j = math.floor(lo / self.width), math.floor(hi / self.width)
        if self.lo_j is not None:
            lo_j, hi_j = min(lo_j, self.lo_j), max(hi_j, self.hi_j)
        while hi_j - lo_j + 1 > self.bins:  # grow: double the width, merge pairs of bins
            self._double()
            lo_j, hi_j = lo_j // 2, hi_j // 2
        # floor(x / (w * 2^k)) == floor(floor(x / w) / 2^k): binning with the final width
        # is the same as shifting indices computed with the old one
        idx = np.floor(x / self.width).astype(np.int64)
        if self.lo_j is None or lo_j < self.j0 or hi_j >= self.j0 + self.bins:
            self._slide(lo_j)
        self.lo_j, self.hi_j = lo_j, hi_j
        self.counts += np.bincount(idx - self.j0, minlength=self.bins)[: self.bins]

    def _double(self) -> None:
        pos = (self.j0 + np.arange(self.bins)) // 2
        new_j0 = self.j0 // 2
        self.counts = np.bincount(pos - new_j0, weights=self.counts, minlength=self.bins)[: self.bins]
        self.j0 = new_j0
        self.width *= 2.0
        if self.lo_j is not None:
            self.lo_j //= 2
            self.hi_j //= 2

    def _slide(self, new_j0: int) -> None:
        counts = np.zeros(self.bins, np.float64)
        if self.lo_j is not None:
            a, b = self.lo_j - self.j0, self.hi_j - self.j0 + 1
            counts[a + self.j0 - new_j0: b + self.j0 - new_j0] = self.counts[a:b]
        self.counts, self.j0 = counts, new_j0

    @classmethod
    def one_shot(cls, x: np.ndarray, width: float, j0: int, bins: int) -> np.ndarray:
        """Counts of all of ``x`` on a given lattice (what streaming must reproduce)."""
        idx = np.floor(np.asarray(x, np.float64).ravel() / width).astype(np.int64) - j0
        if idx.size and (idx.min() < 0 or idx.max() >= bins):
            raise ValueError("data outside the lattice window")
        return np.bincount(idx, minlength=bins).astype(np.float64)

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def edges(self) -> np.ndarray:
        return (self.j0 + np.arange(self.bins + 1)) * self.width

    def occupied(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, left edges) of the occupied bins only."""
        a, b = self.lo_j - self.j0, self.hi_j - self.j0 + 1
        return self.counts[a:b], (self.lo_j + np.arange(b - a)) * self.width

    def abs_counts(self) -> np.ndarray:
        """Histogram of |x| on ``[k*w, (k+1)*w)``, k = 0..: bin j >= 0 -> k = j, bin j < 0 ->
        k = -j - 1 (exact fold; the lattice is symmetric about 0)."""
        j = self.j0 + np.arange(self.bins)
        k = np.where(j >= 0, j, -j - 1)
        keep = self.counts > 0
        if not keep.any():
            return np.zeros(1)
        return np.bincount(k[keep], weights=self.counts[keep])

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the mass lies (linear inside a bin)."""
        counts, left = self.occupied()
        cdf = np.cumsum(counts)
        target = q * cdf[-1]
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(i, len(counts) - 1)
        before = cdf[i - 1] if i > 0 else 0.0
        frac = (target - before) / counts[i] if counts[i] > 0 else 0.0
        return float(left[i] + min(max(frac, 0.0), 1.0) * self.width)


def abs_quantile(abs_counts: np.ndarray, width: float, q: float) -> float:
    cdf = np.cumsum(abs_counts)
    target = q * cdf[-1]
    i = min(int(np.searchsorted(cdf, target, side="left")), len(abs_counts) - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = (target - before) / abs_counts[i] if abs_counts[i] > 0 else 0.0
    return float((i + min(max(frac, 0.0), 1.0)) * width)


class HistogramObserver(Observer):
    """An observer with a :class:`StreamingHistogram` (and the exact min/max beside it)."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__()
        self.hist = StreamingHistogram(bins)
        self.zeros = 0  # exact zeros (ReLU outputs, padding), counted apart for entropy

    def _update(self, x: np.ndarray) -> None:
        self.hist.update(x)
        self.zeros += int(np.count_nonzero(x == 0))

    def compute_range(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        lo, hi = self.minmax()
        if self.empty or lo == hi:
            return super().compute_range(bits, symmetric)
        if symmetric or lo < 0 < hi and self._fold_signed():
            t = self._abs_threshold(bits, symmetric)
            t = min(t, max(abs(lo), abs(hi)))
            return (-t, t) if symmetric else (max(lo, -t), min(hi, t))
        return self._range(bits)

    def _fold_signed(self) -> bool:  # entropy works on |x| for signed data
        return False

    def _abs_threshold(self, bits: int, symmetric: bool) -> float:
        raise NotImplementedError

    def _range(self, bits: int) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """Clip at the p-th percentile (of |x| when symmetric, of each tail when asymmetric)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = DEFAULT_BINS) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], not {percentile}")
        super().__init__(bins)
        self.p = percentile / 100.0

    def _abs_threshold(self, bits: int, symmetric: bool) -> float:
        return abs_quantile(self.hist.abs_counts(), self.hist.width, self.p)

    def _range(self, bits: int) -> tuple[float, float]:
        lo, hi = self.minmax()
        qlo = self.hist.quantile(1.0 - self.p) if lo < 0 else lo
        qhi = self.hist.quantile(self.p) if hi > 0 else hi
        return max(lo, qlo), min(hi, qhi)


def _kl_thresholds(counts: np.ndarray, levels: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) for each candidate bin count i in [levels, len(counts)] (TensorRT's method);
    returns (i values, divergences)."""
    n = len(counts)
    cands = np.arange(levels, n + 1, stride)
    if cands.size == 0 or cands[-1] != n:
        cands = np.append(cands, n)
    divs = np.empty(len(cands))
    csum = np.cumsum(counts)
    total = csum[-1]
    for t, i in enumerate(cands):
        p = counts[:i].astype(np.float64).copy()
        p[i - 1] += total - csum[i - 1]  # outliers into the last bin
        nonzero = p > 0
        # merge i bins into `levels` groups (the last group takes the remainder)
        m = i // levels
        starts = np.arange(levels) * m
        group_mass = np.add.reduceat(counts[:i], starts)
        group_nz = np.add.reduceat(nonzero.astype(np.float64), starts)
        group_of = np.minimum(np.arange(i) // m, levels - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(group_nz > 0, group_mass / group_nz, 0.0)
        q = np.where(nonzero, per_bin[group_of], 0.0)
        ps, qs = p.sum(), q.sum()
        if ps <= 0 or qs <= 0:
            divs[t] = np.inf
            continue
        pn, qn = p[nonzero] / ps, q[nonzero] / qs
        with np.errstate(divide="ignore"):
            divs[t] = float(np.sum(pn * np.log(pn / qn))) if np.all(qn > 0) else np.inf
    return cands, divs


class EntropyObserver(HistogramObserver):
    """TensorRT-style entropy (KL divergence) calibration on the histogram of |x|."""

    name = "entropy"

    def _update(self, x: np.ndarray) -> None:
        # as TensorRT: the histogram is of |x| (all bins on [0, max|x|]); signs only matter for
        # the exact min/max kept beside it
        super()._update(np.abs(x))

    def _fold_signed(self) -> bool:
        return True

    def _abs_counts(self) -> np.ndarray:
        # exact zeros (often half of a ReLU output) would dominate bin 0 and push the
        # divergence towards tiny thresholds; they are represented exactly at any threshold,
        # so they are left out (pytorch-quantization's ``skip_zeros``).
        counts = self.hist.abs_counts().copy()
        counts[0] = max(counts[0] - self.zeros, 0.0)
        return counts

    def _threshold(self, counts: np.ndarray, levels: int) -> float:
        counts = np.trim_zeros(counts, "b")
        if len(counts) <= levels:
            return len(counts) * self.hist.width
        stride = max(1, (len(counts) - levels) // 512)  # at most ~512 candidates
        cands, divs = _kl_thresholds(counts, levels, stride)
        best = len(divs) - 1 - int(np.argmin(divs[::-1]))  # last minimum, as TensorRT
        return float(cands[best] * self.hist.width)

    def _abs_threshold(self, bits: int, symmetric: bool) -> float:
        return self._threshold(self._abs_counts(), 2 ** (bits - 1))

    def _range(self, bits: int) -> tuple[float, float]:
        lo, hi = self.minmax()
        if lo >= 0:  # non-negative data (e.g. after ReLU): all 2^bits levels on [0, T]
            return lo, min(hi, self._threshold(self._abs_counts(), 2 ** bits))
        if hi <= 0:
            return -min(-lo, self._threshold(self._abs_counts(), 2 ** bits)), hi
        t = self._abs_threshold(bits, False)
        return max(lo, -t), min(hi, t)


class MSEObserver(HistogramObserver):
    """The range alpha * [lo, hi] (alpha on a grid) of least expected squared error."""

    name = "mse"

    def __init__(self, bins: int = DEFAULT_BINS, grid: int = 100) -> None:
        super().__init__(bins)
        self.grid = grid

    def _search(self, bits: int, symmetric: bool) -> tuple[float, float]:
        counts, left = self.hist.occupied()
        centers = left + 0.5 * self.hist.width
        lo, hi = self.minmax()
        if symmetric:
            a = max(abs(lo), abs(hi))
            lo, hi = -a, a
        qt = qparams.activation_qtype(8, symmetric) if bits == 8 else None
        steps = (qt.qmax - qt.qmin) if qt else (2 ** bits - 1)
        best, best_err = (lo, hi), math.inf
        for alpha in np.linspace(1.0 / self.grid, 1.0, self.grid):
            clo, chi = min(lo * alpha, 0.0), max(hi * alpha, 0.0)
            step = (chi - clo) / steps
            inside = (centers >= clo) & (centers <= chi)
            clip_err = np.where(centers < clo, (clo - centers) ** 2, (centers - chi) ** 2)
            err = float(np.sum(counts * np.where(inside, step * step / 12.0, clip_err)))
            if err < best_err:
                best, best_err = (clo, chi), err
        return best

    def _abs_threshold(self, bits: int, symmetric: bool) -> float:
        return self._search(bits, True)[1]

    def _range(self, bits: int) -> tuple[float, float]:
        lo, hi = self.minmax()
        clo, chi = self._search(bits, False)
        return max(lo, clo), min(hi, chi)


OBSERVERS = ("minmax", "percentile", "entropy", "mse")


def make_observer(name: str, *, percentile: float = 99.99, bins: int = DEFAULT_BINS) -> Observer:
    """A fresh observer by name (one of :data:`OBSERVERS`)."""
    if name == "minmax":
        return MinMaxObserver()
    if name == "percentile":
        return PercentileObserver(percentile, bins)
    if name == "entropy":
        return EntropyObserver(bins)
    if name == "mse":
        return MSEObserver(bins)
    raise ValueError(f"unknown observer {name!r} (one of {', '.join(OBSERVERS)})")


def mse_weight_amax(w: np.ndarray, bits: int, axis: int | None, grid: int = 50) -> np.ndarray:
    """Per-channel (or per-tensor) clipping ``alpha * max|w|``, alpha in [0.3, 1] on a grid,
    minimising the exact squared error of symmetric fake quantization at ``bits``."""
    w = np.asarray(w, np.float32)
    qt = qparams.weight_qtype(bits)
    if axis is None:
        wc = w.reshape(1, -1)
    else:
        wc = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(wc).max(axis=1)
    best = amax.copy()
    best_err = np.full(len(amax), np.inf)
    for alpha in np.linspace(0.3, 1.0, grid):
        a = amax * alpha
        scale = qparams.symmetric_scale(a, qt).reshape(-1, 1)
        err = np.sum((np.clip(np.rint(wc / scale), qt.qmin, qt.qmax) * scale - wc) ** 2, axis=1)
        better = err < best_err
        best[better], best_err[better] = a[better], err[better]
    return best if axis is not None else best[0]
