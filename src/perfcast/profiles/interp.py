"""Interpolation in log space, vectorized: 1-D curves and 2-D row grids.

Interpolated quantities are log ratios of measured time over the ideal roofline, so that between
grid points physics (wave quantization, the roofline knee) carries the shape and the measurements
carry the level. Outside the measured range values are held at the nearest edge.
"""

from __future__ import annotations

import numpy as np


def unique(a, return_inverse: bool = False):
    """``np.unique`` of a flattened array (sorted distinct values, and the index of each element's value
    when asked), by one sort. Same values as ``np.unique``, without its import of ``numpy.ma``
    (a tenth of a second at start-up)."""
    flat = np.asarray(a).ravel()
    order = np.argsort(flat)
    s = flat[order]
    new = np.empty(s.shape, dtype=bool)
    new[:1] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    u = s[new]
    if not return_inverse:
        return u
    inv = np.empty(flat.shape, dtype=np.intp)
    inv[order] = np.cumsum(new) - 1
    return u, inv


def _full(a, shape):
    return a if a.shape == shape else np.broadcast_to(a, shape)


class Curve:
    """y(x) from points, interpolated linearly in log x; duplicate x values are averaged."""

    def __init__(self, x, y):
        x = np.log(np.asarray(x, dtype=float))
        y = np.asarray(y, dtype=float)
        ux, inv = unique(x, return_inverse=True)
        sums = np.bincount(inv, weights=y)
        cnt = np.bincount(inv)
        self.x = ux
        self.y = sums / cnt
        self.lo, self.hi = float(np.exp(ux[0])), float(np.exp(ux[-1]))

    def __call__(self, q):
        return np.interp(np.log(np.asarray(q, dtype=float)), self.x, self.y)

    def at_log(self, lq):
        """``self(q)`` given ``lq = log(q)``."""
        return np.interp(lq, self.x, self.y)

    def contains(self, q):
        q = np.asarray(q, dtype=float)
        return (q >= self.lo * (1 - 1e-9)) & (q <= self.hi * (1 + 1e-9))

    def on_grid(self, q):
        return self.on_grid_log(np.log(np.asarray(q, dtype=float)))

    def on_grid_log(self, lq):
        """``self.on_grid(q)`` given ``lq = log(q)``."""
        lq = np.asarray(lq)
        if lq.size > 64:  # points farther than 1e-8 outside the grid's span are on no grid point
            span = (lq >= self.x[0] - 1e-8) & (lq <= self.x[-1] + 1e-8)
            k = np.count_nonzero(span)
            if 2 * k < lq.size:
                out = np.zeros(lq.shape, dtype=bool)
                if k:
                    out[span] = self._on_grid_log(lq[span])
                return out
        return self._on_grid_log(lq)

    def _on_grid_log(self, lq):
        idx = np.minimum(np.searchsorted(self.x, lq), len(self.x) - 1)  # (searchsorted is >= 0)
        near = np.minimum(np.abs(self.x[idx] - lq), np.abs(self.x[np.maximum(idx - 1, 0)] - lq))
        return near < 1e-9


def monotone_log_ratio(x, log_ratio, base):
    """Log ratios whose implied times ``base * exp(log_ratio)`` never fall as ``x`` grows.

    A problem can always be padded up to a larger measured one, so the time at ``x`` is at most the
    smallest time measured at any larger ``x``: the suffix minimum (raw measurements are kept as
    they are on disk; this shapes only the interpolant).
    """
    order = np.argsort(x, kind="stable")
    t = np.asarray(base, dtype=float)[order] * np.exp(np.asarray(log_ratio, dtype=float)[order])
    t = np.minimum.accumulate(t[::-1])[::-1]
    out = np.empty_like(t)
    out[order] = np.log(t / np.asarray(base, dtype=float)[order])
    return out


class RowGrid:
    """y(x1, x2) from scattered points that lie on rows of constant x1 (each row a Curve in x2).

    Rows are interpolated in log x2 first, then linearly in log x1 between the two nearest rows.
    """

    def __init__(self, x1, x2, y, min_row_points: int = 1):
        x1 = np.asarray(x1, dtype=float)
        rows = {}
        for v in unique(x1):
            sel = x1 == v
            if sel.sum() >= min_row_points:
                rows[float(v)] = Curve(np.asarray(x2)[sel], np.asarray(y)[sel])
        self.keys = np.log(np.array(sorted(rows)))
        self.rows = [rows[k] for k in sorted(rows)]

    def __call__(self, q1, q2):
        return self.lookup(q1, q2, inside=False)[0]

    def lookup(self, q1, q2, values: bool = True, inside: bool = True):
        """``(self(q1, q2), self.contains(q1, q2))``, sharing the work (None for the one not asked)."""
        q1 = np.asarray(q1, dtype=float)
        q2 = np.asarray(q2, dtype=float)
        shape = np.broadcast(q1, q2).shape
        single = len(self.rows) == 1
        lq1 = _full(np.log(q1), shape)
        pos = None if single else self._row_below(lq1)
        val = ok = None
        if values and single:
            val = np.broadcast_to(self.rows[0](q2), shape)
        elif values:
            flat = lq1.ravel()
            lq2 = np.log(q2)
            vals = np.empty((len(self.rows), flat.size))  # every row at every point
            for i, r in enumerate(self.rows):
                vals[i] = _full(np.interp(lq2, r.x, r.y), shape).ravel()
            p = pos.ravel()
            x0, x1 = self.keys[p], self.keys[p + 1]
            w = np.clip((flat - x0) / (x1 - x0), 0.0, 1.0)
            at = np.arange(flat.size)
            val = (vals[p, at] * (1 - w) + vals[p + 1, at] * w).reshape(shape)
        if inside:
            in1 = (lq1 >= self.keys[0] - 1e-9) & (lq1 <= self.keys[-1] + 1e-9)
            q2b = np.broadcast_to(q2, shape)
            if single:
                ok = in1 & np.broadcast_to(self.rows[0].contains(q2b), shape)
            else:
                lo = np.array([r.lo for r in self.rows])
                hi = np.array([r.hi for r in self.rows])
                ok = in1 & ((q2b >= lo[pos] * (1 - 1e-9)) & (q2b <= hi[pos] * (1 + 1e-9))
                            & (q2b >= lo[pos + 1] * (1 - 1e-9)) & (q2b <= hi[pos + 1] * (1 + 1e-9)))
        return val, ok

    def _row_below(self, lq1):
        """Index of the row at or below each log x1 (clamped to the first and the last pair of rows)."""
        return np.maximum(np.minimum(np.searchsorted(self.keys, lq1) - 1, len(self.keys) - 2), 0)

    def make_monotone(self):
        """Rows non-decreasing in x2 (suffix minimum in each row), and no row above the next one
        (more parallel work never faster), for rows holding log times."""
        for r in self.rows:
            r.y = np.minimum.accumulate(r.y[::-1])[::-1]
        for i in range(len(self.rows) - 2, -1, -1):
            lo, hi = self.rows[i], self.rows[i + 1]
            inside = (lo.x >= hi.x[0]) & (lo.x <= hi.x[-1])
            lo.y = np.where(inside, np.minimum(lo.y, np.interp(lo.x, hi.x, hi.y)), lo.y)
            lo.y = np.minimum.accumulate(lo.y[::-1])[::-1]
        return self

    def contains(self, q1, q2):
        """Inside the rows' span and inside the x2 range of both rows that bracket q1."""
        return self.lookup(q1, q2, values=False)[1]
