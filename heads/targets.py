"""Targets: what a head predicts, built from the cache's columns.

A :class:`TargetSpec` fixes everything about a target that a head, a loss or a reader of a run
dir needs: its kind, thresholds, number of outputs, bins and encoding. It is recorded in the
run dir's ``config.json`` and read back by ``vh eval``.

Kinds (registry :data:`KINDS`):

- ``ordinal``: K milestones, ``y_k = [highest_tile of the state's run >= T_k]``; a head outputs
  K logits, ``q_k = sigmoid(logit_k) = P(highest_tile >= T_k)``.
- ``tiles``: the number of thresholds reached, a class in ``0..K`` (K+1 logits, softmax).
- ``logscore``: ``log1p(final_score)`` of the run, encoded over ``n_bins`` uniform bins.
- ``return``: the state's discounted return (cache column ``return``) through the MuZero
  transform ``h``, encoded over ``return_bins`` bins, or a scalar regressed with MSE.

Binned encodings: bin centres are ``linspace(lo, hi, n_bins)``; bin i covers
``[c_i - w/2, c_i + w/2]`` with w the bin width. ``sigma == 0`` gives the two-hot (linear)
split between the two adjacent centres, whose expectation is the value itself; ``sigma > 0``
gives the Gaussian "histogram" label: the mass of N(v, (sigma*w)^2) falling in each bin,
renormalised over the bins.

**Outside rule**: a value below ``lo`` or above ``hi`` is clipped to the nearest end centre
(all of its two-hot mass on the end bin; the Gaussian is centred there). Such labels are
counted (:func:`count_outside`) and the count is reported in the sampling manifest. ``lo`` and
``hi`` default to the range of the train split, so only val/test labels can fall outside.

Axis legend: n rows (states), K thresholds, C bins or classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vh.config import TargetConfig
from vh.errors import VhError

KINDS = ("ordinal", "tiles", "logscore", "return")
MUZERO_EPS = 1e-3


@dataclass(frozen=True)
class TargetSpec:
    """Everything about a target that heads, losses and readers need.

    Attributes:
        kind: ``ordinal`` | ``tiles`` | ``logscore`` | ``return``.
        thresholds: tile values T_1 < … < T_K (ordinal and tiles; kept for every kind).
        n_out: number of head outputs.
        encoding: ``bernoulli`` (ordinal), ``class`` (tiles), ``twohot`` | ``gaussian``
            (binned logscore/return), ``scalar`` (return regressed with MSE).
        monotone: ordinal logits ordered by construction.
        lo, hi: centres of the first and last bin, in the target's units (log1p score, or
            h(return)); unused for other kinds.
        sigma: Gaussian encoding width as a ratio of the bin width (0 for two-hot).
    """

    kind: str
    thresholds: tuple[int, ...]
    n_out: int
    encoding: str
    monotone: bool = False
    lo: float = 0.0
    hi: float = 0.0
    sigma: float = 0.0

    @property
    def binned(self) -> bool:
        return self.encoding in ("twohot", "gaussian")

    @property
    def bin_centers(self) -> np.ndarray:
        """Centres of the bins, float64 [C] (binned kinds only)."""
        return np.linspace(self.lo, self.hi, self.n_out)

    @property
    def bin_width(self) -> float:
        return (self.hi - self.lo) / max(self.n_out - 1, 1)

    @property
    def bin_edges(self) -> np.ndarray:
        """Edges of the bins, float64 [C + 1]: centres ± half a bin width."""
        c = self.bin_centers
        return np.concatenate([c - self.bin_width / 2, c[-1:] + self.bin_width / 2])

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "thresholds": list(self.thresholds)}

    @classmethod
    def from_dict(cls, d: dict) -> TargetSpec:
        """Inverse of :meth:`to_dict`; VhError naming a missing field."""
        missing = [k for k in ("kind", "thresholds", "n_out", "encoding") if k not in d]
        if missing:
            raise VhError(f"target spec lacks {', '.join(missing)}", field="target")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        return cls(**{**kw, "thresholds": tuple(int(t) for t in kw["thresholds"])})


# --------------------------------------------------------------------------- transforms


def _xp(x):
    """(array module, standard normal CDF) matching ``x``: numpy/scipy or jax."""
    if isinstance(x, np.ndarray | np.generic | float | int):
        from scipy.special import ndtr

        return np, ndtr
    import jax.numpy as jnp
    from jax.scipy.special import ndtr

    return jnp, ndtr


def muzero_h(x, eps: float = MUZERO_EPS):
    """MuZero value transform ``h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x`` (numpy or jax)."""
    xp, _ = _xp(x)
    return xp.sign(x) * (xp.sqrt(xp.abs(x) + 1.0) - 1.0) + eps * x


def muzero_h_inv(y, eps: float = MUZERO_EPS):
    """Exact inverse of :func:`muzero_h` (closed form of the quadratic in sqrt(|x|+1))."""
    xp, _ = _xp(y)
    a = xp.sqrt(1.0 + 4.0 * eps * (xp.abs(y) + 1.0 + eps))
    return xp.sign(y) * (((a - 1.0) / (2.0 * eps)) ** 2 - 1.0)


def soft_labels(v, spec: TargetSpec):
    """Encode values over the spec's bins (numpy in → numpy out, jax in → jax out).

    Args:
        v: values [n] in the target's units; clipped to [lo, hi] (the outside rule).
        spec: a binned spec.

    Returns:
        Probabilities [n, C] summing to 1 (float32 for jax, float64 for numpy).
    """
    xp, ndtr = _xp(v)
    c = spec.n_out
    w = spec.bin_width
    v = xp.clip(v, spec.lo, spec.hi)[:, None]  # (n, 1)
    if spec.sigma == 0:
        pos = (v - spec.lo) / w
        i = xp.clip(xp.floor(pos), 0, c - 2)
        frac = pos - i
        k = xp.arange(c)[None, :]  # (1, C)
        return (k == i) * (1.0 - frac) + (k == i + 1) * frac
    edges = xp.asarray(spec.bin_edges, dtype=v.dtype)[None, :]  # (1, C + 1)
    cdf = ndtr((edges - v) / (spec.sigma * w))  # (n, C + 1)
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / xp.maximum(cdf[:, -1:] - cdf[:, :1], 1e-12)


def count_outside(values: np.ndarray, spec: TargetSpec) -> int:
    """How many values the outside rule clips (0 for unbinned kinds)."""
    if not spec.binned:
        return 0
    return int(np.count_nonzero((values < spec.lo) | (values > spec.hi)))


# --------------------------------------------------------------------------- the spec


def _check_thresholds(t: tuple[int, ...]) -> None:
    if not t or any(x <= 0 for x in t) or any(b <= a for a, b in zip(t, t[1:], strict=False)):
        raise VhError(
            f"thresholds must be positive and strictly increasing, got {list(t)}",
            field="fit.target.thresholds",
        )


def _bin_range(cfg: TargetConfig, train_values: np.ndarray | None) -> tuple[float, float]:
    if cfg.bin_range:
        if len(cfg.bin_range) != 2 or cfg.bin_range[1] <= cfg.bin_range[0]:
            raise VhError(
                f"expected [lo, hi] with hi > lo, got {list(cfg.bin_range)}",
                field="fit.target.bin_range",
            )
        return float(cfg.bin_range[0]), float(cfg.bin_range[1])
    if train_values is None or len(train_values) == 0:
        raise VhError("no train values to derive the bin range from", field="fit.target.bin_range")
    lo, hi = float(np.min(train_values)), float(np.max(train_values))
    return lo, (hi if hi > lo else lo + 1.0)  # one distinct value: any non-empty range works


def make_spec(
    cfg: TargetConfig, *, monotone: bool = False, train_values: np.ndarray | None = None
) -> TargetSpec:
    """Resolve a :class:`TargetSpec` from the config (and the train split, for bin ranges).

    Args:
        cfg: the target section of the config.
        monotone: the head's monotone flag (ordinal only).
        train_values: target values of the train rows in the target's units (log1p score or
            h(return)); needed for binned kinds when ``cfg.bin_range`` is empty.

    Returns:
        The spec.
    """
    _check_thresholds(cfg.thresholds)
    if cfg.kind not in KINDS:
        raise VhError(f"unknown target kind (valid: {', '.join(KINDS)})", field="fit.target.kind")
    if monotone and cfg.kind != "ordinal":
        raise VhError("monotone heads exist for ordinal targets only", field="fit.head.monotone")
    k = len(cfg.thresholds)
    base = TargetSpec(cfg.kind, tuple(cfg.thresholds), k, "bernoulli", monotone=monotone)
    if cfg.kind == "ordinal":
        return base
    if cfg.kind == "tiles":
        return dataclasses.replace(base, n_out=k + 1, encoding="class")
    if cfg.kind == "return" and cfg.return_encoding == "scalar":
        return dataclasses.replace(base, n_out=1, encoding="scalar")
    if cfg.kind == "logscore":
        n, sigma = cfg.n_bins, cfg.smoothing
    else:
        n, sigma = cfg.return_bins, (cfg.return_sigma if cfg.return_encoding == "gaussian" else 0)
    if n < 2 or sigma < 0:
        raise VhError(
            f"need at least 2 bins and sigma >= 0, got {n} bins, sigma {sigma}",
            field=f"fit.target.{'n_bins' if cfg.kind == 'logscore' else 'return_bins'}",
        )
    lo, hi = _bin_range(cfg, train_values)
    return dataclasses.replace(
        base,
        n_out=n,
        encoding="gaussian" if sigma > 0 else "twohot",
        lo=lo,
        hi=hi,
        sigma=float(sigma),
    )


# --------------------------------------------------------------------------- labels


def run_index(reader, run_id: np.ndarray) -> np.ndarray:
    """Position of each row's run in ``reader.runs`` (sorted by id); VhError if absent."""
    ids = np.asarray(reader.runs["id"])
    pos = np.clip(np.searchsorted(ids, run_id), 0, max(len(ids) - 1, 0))
    bad = len(ids) == 0 or not np.array_equal(ids[pos], run_id)
    if bad:
        missing = run_id[ids[pos] != run_id][:1] if len(ids) else run_id[:1]
        raise VhError(
            f"run {int(missing[0])} of the states is not in the runs table",
            path=reader.path,
            field="runs/id",
        )
    return pos


def target_values(kind: str, reader, rows: np.ndarray) -> dict:
    """Raw per-row label sources for ``rows`` of the cache.

    Args:
        kind: the target kind (decides which columns are read).
        reader: an open cache.
        rows: int row indices.

    Returns:
        ``highest_tile`` i64[n] and ``final_score`` f64[n] of each row's run, ``value`` f64[n]
        (the target in its own units: log1p score, h(return); absent for ordinal/tiles) and,
        for ``return``, ``ret`` (the raw discounted return).
    """
    rows = np.asarray(rows, dtype=np.int64)
    run = run_index(reader, np.asarray(reader.column("run_id"))[rows])
    out = {
        "highest_tile": np.asarray(reader.runs["highest_tile"], np.int64)[run],
        "final_score": np.asarray(reader.runs["final_score"], np.float64)[run],
    }
    if kind == "logscore":
        out["value"] = np.log1p(out["final_score"])
    elif kind == "return":
        if not reader.has_column("return"):
            raise VhError(
                "the return head needs the cache's `return` column: extract with "
                "--set extract.gamma=0.997",
                path=reader.path,
                field="return",
            )
        out["ret"] = np.asarray(reader.column("return"), np.float64)[rows]
        out["value"] = muzero_h(out["ret"])
    return out


def reached(spec: TargetSpec, highest_tile: np.ndarray) -> np.ndarray:
    """``y_k = [highest_tile >= T_k]``, u1[n, K]."""
    return (highest_tile[:, None] >= np.asarray(spec.thresholds)[None, :]).astype(np.uint8)


def train_targets(spec: TargetSpec, values: dict) -> np.ndarray:
    """The compact label a train step consumes (encoded to soft labels inside the step).

    Returns:
        ordinal u1[n, K]; tiles i32[n]; binned and scalar kinds f32[n] (value, unclipped:
        the loss applies the outside rule).
    """
    if spec.kind == "ordinal":
        return reached(spec, values["highest_tile"])
    if spec.kind == "tiles":
        return reached(spec, values["highest_tile"]).sum(1).astype(np.int32)
    return values["value"].astype(np.float32)


def build_labels(spec: TargetSpec, reader, rows: np.ndarray) -> dict:
    """Labels of ``rows`` in the head's own form, for evaluation.

    Args:
        spec: the run's target spec.
        reader: an open cache (``vh.cache.reader``).
        rows: int row indices into the cache.

    Returns:
        ``y``: ordinal u1[n, K]; tiles i64[n]; logscore and binned return soft f32[n, C];
        scalar return f64[n] (transformed units). Plus ``highest_tile``, ``final_score``,
        ``score`` (log1p final score, logscore), ``ret`` and ``ret_h`` (return).
    """
    v = target_values(spec.kind, reader, rows)
    out = {"highest_tile": v["highest_tile"], "final_score": v["final_score"]}
    if spec.kind == "ordinal":
        out["y"] = reached(spec, v["highest_tile"])
    elif spec.kind == "tiles":
        out["y"] = reached(spec, v["highest_tile"]).sum(1).astype(np.int64)
    elif spec.encoding == "scalar":
        out["y"] = v["value"]
    else:
        out["y"] = soft_labels(v["value"], spec).astype(np.float32)
    if spec.kind == "logscore":
        out["score"] = v["value"]
    if spec.kind == "return":
        out["ret"], out["ret_h"] = v["ret"], v["value"]
    return out


def link(spec: TargetSpec):
    """The jax function from logits [n, n_out] to what ``predict`` returns for this target."""
    import jax

    if spec.kind == "ordinal":
        return jax.nn.sigmoid
    if spec.encoding == "scalar":
        return lambda z: z[..., 0]
    return jax.nn.softmax
