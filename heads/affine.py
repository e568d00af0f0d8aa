"""The affine map of a probe head, with numpy only (no jax), so torch-side code can use it.

``vh export`` and ``vh play`` read a head's output layer through :func:`linear_map`;
:mod:`vh.heads.modules` re-exports it for the JAX side.
"""

from __future__ import annotations

import numpy as np

from vh.errors import VhError


def linear_map(flat: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The affine map of a probe as ``(weight [out, D], bias [out])`` (PyTorch layout).

    A monotone probe is affine too: every threshold shares the score direction and gets its
    own cut point as bias.
    """
    if "hidden.kernel" in flat:
        raise VhError("an MLP head has no affine map", field="params")
    if "out.kernel" in flat:
        return flat["out.kernel"].T.copy(), flat["out.bias"].copy()
    if "score.kernel" in flat:
        inc = flat["cut_inc"].astype(np.float64)
        t = flat["cut_b"] - np.cumsum(np.logaddexp(0.0, inc))  # softplus, in numpy
        w = np.repeat(flat["score.kernel"].T, len(t), axis=0)  # (K, D)
        return w.astype(np.float32), t.astype(np.float32)
    raise VhError("not a probe: no affine map", field="params")
