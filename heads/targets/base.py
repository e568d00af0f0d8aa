"""What every target kind shares: the spec, the binned encoding, labels from thresholds, and
the :class:`TargetKind` base class a kind module fills in.

A :class:`TargetSpec` fixes everything about a target that a head, a loss or a reader of a run
dir needs: its kind, thresholds, number of outputs, bins and encoding. It is recorded in the
run dir's ``config.json`` and read back by ``vh eval`` and ``vh export``.

Binned encodings: bin centres are ``linspace(lo, hi, n_bins)``; bin i covers
``[c_i - w/2, c_i + w/2]`` with w the bin width. ``sigma == 0`` gives the two-hot (linear)
split between the two adjacent centres, whose expectation is the value itself; ``sigma > 0``
gives the Gaussian "histogram" label: the mass of N(v, (sigma*w)^2) falling in each bin,
renormalised over the bins.

**Outside rule**: a value below ``lo`` or above ``hi`` is clipped to the nearest end centre
(all of its two-hot mass on the end bin; the Gaussian is centred there). Such labels are
counted (:func:`count_outside`) and the count is reported in the sampling manifest. ``lo`` and
``hi`` default to the range of the train split, so only val/test labels can fall outside.

This module imports numpy only (jax, scipy and ``vh.eval`` lazily, where a kind needs them):
``vh.config`` asks the registry for the valid kinds, and every phase imports the config.

Axis legend: n rows (states), K thresholds, C bins or classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vh.errors import VhError

if TYPE_CHECKING:
    from vh.config import LossConfig, TargetConfig
    from vh.eval.predictions import Predictions
    from vh.eval.scoring import Context, HeadScore
    from vh.heads.losses import Objective


@dataclass(frozen=True)
class TargetSpec:
    """Everything about a target that heads, losses and readers need.

    Attributes:
        kind: the registered kind's name (``ordinal`` | ``tiles`` | ``logscore`` | ``return``).
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


# --------------------------------------------------------------------------- binned encoding


def _xp(x):
    """(array module, standard normal CDF) matching ``x``: numpy/scipy or jax."""
    if isinstance(x, np.ndarray | np.generic | float | int):
        from scipy.special import ndtr

        return np, ndtr
    import jax.numpy as jnp
    from jax.scipy.special import ndtr

    return jnp, ndtr


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


def bin_range(cfg: TargetConfig, train_values: np.ndarray | None) -> tuple[float, float]:
    """``(lo, hi)``, both finite: an infinite end makes every bin width inf and every label
    NaN, which a loss then reads as zero."""
    if cfg.bin_range:
        b = list(cfg.bin_range)
        if len(b) != 2 or not np.all(np.isfinite(np.asarray(b, float))) or b[1] <= b[0]:
            raise VhError(
                f"expected [lo, hi], finite, with hi > lo, got {b}", field="fit.target.bin_range"
            )
        return float(b[0]), float(b[1])
    if train_values is None or len(train_values) == 0:
        raise VhError("no train values to derive the bin range from", field="fit.target.bin_range")
    lo, hi = float(np.min(train_values)), float(np.max(train_values))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise VhError(
            f"the train values span [{lo}, {hi}], not a finite bin range",
            field="fit.target.bin_range",
        )
    return lo, (hi if hi > lo else lo + 1.0)  # one distinct value: any non-empty range works


def binned_spec(
    base: TargetSpec,
    cfg: TargetConfig,
    n: int,
    sigma: float,
    field: str,
    train_values: np.ndarray | None,
) -> TargetSpec:
    """``base`` made a binned spec: ``n`` bins over the configured (or train) range."""
    if n < 2 or sigma < 0:
        raise VhError(
            f"need at least 2 bins and sigma >= 0, got {n} bins, sigma {sigma}", field=field
        )
    lo, hi = bin_range(cfg, train_values)
    return dataclasses.replace(
        base,
        n_out=n,
        encoding="gaussian" if sigma > 0 else "twohot",
        lo=lo,
        hi=hi,
        sigma=float(sigma),
    )


def value_labels(spec: TargetSpec, values: dict) -> np.ndarray:
    """The train label of a kind with a value in its own units: f32[n], unclipped (the loss
    applies the outside rule); refused where float32 cannot hold it."""
    y = values["value"].astype(np.float32)
    if not np.isfinite(y).all():  # e.g. a value beyond float32: the loss would read NaN as 0
        i = int(np.flatnonzero(~np.isfinite(y))[0])
        raise VhError(f"label {i} is {y[i]} in float32", field=f"fit.target.kind={spec.kind}")
    return y


# --------------------------------------------------------------------------- label sources


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


# the largest tile a 4x4 board can reach (as in vh.extract.dataset)
MAX_TILE = 1 << 17


def refuse_where(bad: np.ndarray, values: np.ndarray, reader, field: str, why: str) -> None:
    """VhError naming the cache, the field and the first entry where ``bad`` holds."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise VhError(
            f"entry {i}: {values[i]} {why} ({int(bad.sum()):,} such); labels would be wrong",
            path=reader.path,
            field=field,
        )


def check_runs(reader) -> None:
    """Refuse a runs table whose label sources cannot be true (R entries: cheap).

    ``highest_tile`` must be a tile value 2..2**17, ``final_score`` finite and >= 0 (a
    cache of an older vh, or one edited by hand, was never checked by ``vh extract``).
    """
    tile = np.asarray(reader.runs["highest_tile"])
    score = np.asarray(reader.runs["final_score"])
    if tile.dtype.kind == "f" and not np.isfinite(tile).all():
        refuse_where(~np.isfinite(tile), tile, reader, "runs/highest_tile", "is not finite")
    t = tile.astype(np.int64)
    bad = (t != tile) | (t < 2) | (t > MAX_TILE) | ((t & (t - 1)) != 0)
    refuse_where(bad, tile, reader, "runs/highest_tile", "is not a tile value 2..131072")
    f = score.astype(np.float64)
    refuse_where(~np.isfinite(f) | (f < 0), score, reader, "runs/final_score", "is not a score")


# --------------------------------------------------------------------------- threshold labels


def reached(highest_tile: np.ndarray, thresholds) -> np.ndarray:
    """``Y[i, k] = highest_tile[i] >= T_k``: bool ``(n, K)``, the milestones a run reached."""
    return np.asarray(highest_tile)[:, None] >= np.asarray(thresholds)[None, :]


def tile_bucket(highest_tile: np.ndarray, thresholds) -> np.ndarray:
    """The number of thresholds reached, 0..K: int64 ``(n,)`` (``T`` strictly increasing)."""
    return np.searchsorted(np.asarray(thresholds), np.asarray(highest_tile), side="right").astype(
        np.int64
    )


def check_thresholds(t: tuple[int, ...]) -> None:
    """Refuse thresholds that are not positive and strictly increasing."""
    if not t or any(x <= 0 for x in t) or any(b <= a for a, b in zip(t, t[1:], strict=False)):
        raise VhError(
            f"thresholds must be positive and strictly increasing, got {list(t)}",
            field="fit.target.thresholds",
        )


def check_reached(spec: TargetSpec, highest_tile: np.ndarray) -> None:
    """Refuse a threshold no train run reaches: its classifier could only learn 'never'."""
    top = int(highest_tile.max())
    for t in spec.thresholds:
        if t > top:
            raise VhError(
                f"threshold {t} is reached by no train run (highest tile in train: "
                f"{top}); lower or drop it, e.g. --set fit.target.thresholds=[...]",
                field="fit.target.thresholds",
            )


def class_outputs(pred, expect, width: int, val_y: tuple[int, ...] = ()) -> None:
    """Shapes of a head's logits ``(n, width)`` and validation logits and labels ``(m, *val_y)``
    (every kind scaled by a temperature)."""
    n, out = pred.n, pred.out
    expect("out_logits", out.get("logits"), (n, width))
    if "val_logits" in out:
        m = out["val_logits"].shape[0]
        expect("out_val_logits", out["val_logits"], (m, width))
        expect("out_val_y", out.get("val_y"), (m, *val_y))


def cross_entropy_objective(spec: TargetSpec, vocab_type: str) -> dict[str, Any]:
    """The exported ``objective`` block of a head trained with the cross-entropy: its classes
    are bins over ``support`` ``[lo, hi]`` (binned kinds) or buckets cut at the ``thresholds``
    (class kinds), as :meth:`TargetKind.export_objective` returns it."""
    out = {"type": "cross_entropy", "vocab_size": int(spec.n_out), "vocab_type": vocab_type}
    if spec.binned:
        out["support"] = [float(spec.lo), float(spec.hi)]
    else:
        out["thresholds"] = [int(t) for t in spec.thresholds]
    return out


# --------------------------------------------------------------------------- pools and kinds


@dataclass(frozen=True)
class Pool:
    """Heads that can be compared at all (their figures share a scale); ranked inside only.

    Attributes:
        name: the pool's key in ``metrics.json`` (``threshold``, ``logscore``, ``return``).
        title: how the verdict names its heads.
        cross: what family champions of the pool meet on, in order (their NLLs differ).
        slice_metric: the figure the cross-run slice plots show (one scale for the pool).
    """

    name: str
    title: str
    cross: tuple[str, ...]
    slice_metric: str


# ordinal and tiles heads meet here: both give P(highest tile >= T_k) and bucket probabilities
THRESHOLD_POOL = Pool(
    "threshold",
    "threshold heads (ordinal and tiles, scored on the same thresholds)",
    ("auroc_top", "ece_high", "within1"),
    "bucket_nll",
)


class TargetKind:
    """One target kind: a subclass per module, registered with :func:`vh.heads.targets.register`.

    Class attributes say what the kind is; methods do what only the kind knows. The defaults
    suit a kind with one logit row per state and no temperature scaling.

    Attributes:
        name: ``fit.target.kind`` and the ``kind`` of its predictions files.
        aliases: further ``vh fit --head`` names for the kind.
        pool: the heads it is compared with (:class:`Pool`).
        thresholded: scored on the tile thresholds (shares ``auroc_top``/``ece_high``).
        monotone_ok: ``fit.head.monotone`` applies.
        temperature: ``"binary"`` or ``"categorical"`` when eval fits a temperature on the
            validation states, else None.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    pool: ClassVar[Pool]
    thresholded: ClassVar[bool] = False
    monotone_ok: ClassVar[bool] = False
    temperature: ClassVar[str | None] = None
    loss_label: ClassVar[str] = ""  # the report's name of the kind's own NLL (default: NLL)

    # ---- fit: spec, labels, loss, output link

    def make_spec(
        self, cfg: TargetConfig, *, monotone: bool, train_values: np.ndarray | None
    ) -> TargetSpec:
        """The spec from the config (thresholds already checked)."""
        raise NotImplementedError

    def check_sources(self, reader) -> None:
        """Refuse impossible values in the cache columns this kind's labels come from."""

    def add_values(self, reader, rows: np.ndarray, out: dict) -> None:
        """Add this kind's per-row label sources to ``out`` (``value``: the target in its
        own units, for binned kinds and the train range)."""

    def check_train(self, spec: TargetSpec, values: dict) -> None:
        """Refuse a target the train split cannot teach."""

    def train_labels(self, spec: TargetSpec, values: dict) -> np.ndarray:
        """The compact label a train step consumes."""
        raise NotImplementedError

    def positive_rate(self, y: np.ndarray) -> np.ndarray | None:
        """Train positive rates for class balancing (kinds that allow it)."""
        return None

    def objective(self, spec: TargetSpec, cfg: LossConfig, pos_rate) -> Objective:
        """Training loss and validation NLL (:class:`vh.heads.losses.Objective`)."""
        raise NotImplementedError

    def link(self, spec: TargetSpec):
        """The jax function from logits [n, n_out] to what ``RunHead.predict`` returns."""
        raise NotImplementedError

    # ---- eval: outputs on the test states, labels, scores, verdict

    def eval_outputs(self, spec: TargetSpec, logits: np.ndarray, values: dict, batch: int) -> dict:
        """What the predictions file keeps of the head on the test states (``out_*``)."""
        return {"logits": logits}

    def eval_labels(self, values: dict, thresholds: np.ndarray, out: dict) -> np.ndarray:
        """The labels its predictions are scored against (the temperature's ``y``).

        Args:
            values: ``highest_tile`` and ``final_score`` of each state's run (and the kind's
                own sources).
            thresholds: ``(K,)`` tile thresholds.
            out: the head's outputs (:meth:`eval_outputs`), e.g. its bin edges.
        """
        raise VhError(f"no class labels for kind {self.name!r}", field="kind")

    def prior_logits(self, spec: TargetSpec, values: dict) -> np.ndarray | None:
        """Logits of the no-skill head: the train split's marginal over the outputs.

        ``values`` are the train rows' label sources (:func:`vh.heads.targets.target_values`).
        Per-threshold labels ``(n, K)`` give base rates as sigmoid logits; class labels
        ``(n,)`` give class frequencies as log-probabilities; a binned kind without class
        labels (return) gives the mean of its soft labels. Probabilities are floored at 1e-6
        (a class no train row has would make the prior's NLL infinite). None when the kind has
        neither (a scalar return).
        """
        out = {"bin_edges": spec.bin_edges} if spec.binned else {}
        try:
            y = np.asarray(self.eval_labels(values, np.asarray(spec.thresholds), out))
        except VhError:
            y = None
        if y is not None and y.ndim == 2:  # binary per threshold: logit of the rate
            rate = np.clip(y.mean(axis=0), 1e-6, 1 - 1e-6)
            return np.log(rate) - np.log1p(-rate)
        if y is not None:
            freq = np.bincount(y.astype(np.int64), minlength=spec.n_out)[: spec.n_out] / y.size
        elif spec.binned and "value" in values:
            v = np.asarray(values["value"], dtype=np.float64)
            total = np.zeros(spec.n_out)
            for a in range(0, v.size, 65536):  # (batch, C) at a time: C can be 601
                total += soft_labels(v[a : a + 65536], spec).sum(axis=0)
            freq = total / max(v.size, 1)
        else:
            return None
        return np.log(np.clip(freq, 1e-6, None))

    def check_outputs(self, pred: Predictions, expect, path) -> None:
        """Refuse outputs of a predictions file (at ``path``) whose shapes do not fit the kind.

        ``expect(key, array or None, shape)`` raises naming the file and the field.
        """
        n = pred.n
        logits = pred.out.get("logits")
        width = logits.shape[1] if logits is not None and logits.ndim == 2 else -1
        expect("out_logits", logits, (n, width))

    def score(self, pred: Predictions, ctx: Context) -> HeadScore:
        """Every figure of one head (:class:`vh.eval.scoring.HeadScore`)."""
        raise NotImplementedError

    def family_criteria(self, s: HeadScore) -> list[str]:
        """What two heads of ``s``'s family are compared on, in order (stability comes last)."""
        return [s.primary]

    # ---- export

    def export_objective(self, spec: TargetSpec) -> dict[str, Any]:
        """The ``objective`` block of an exported ``value_head`` (vh/export.py)."""
        raise NotImplementedError
