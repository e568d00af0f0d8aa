"""Small pure functions that several phases share: the MuZero value transform and SplitMix64.

They live here, outside the phase packages, because both ``vh.extract`` (which never imports
jax) and ``vh.heads`` (which never imports torch) need them; this module imports only numpy
(and jax lazily, when it is handed a jax array).
"""

from __future__ import annotations

import numpy as np

MUZERO_EPS = 1e-3
_GOLDEN = 0x9E3779B97F4A7C15


def _xp(x):
    """The array module of ``x``: numpy for numpy arrays and Python numbers, else jax.numpy."""
    if isinstance(x, np.ndarray | np.generic | float | int | list | tuple):
        return np
    import jax.numpy as jnp

    return jnp


def muzero_h(x, eps: float = MUZERO_EPS):
    """MuZero's value transform ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x``.

    Args:
        x: values (numpy: computed in float64; jax: in the input's dtype).
        eps: the linear term's weight.

    Returns:
        ``h(x)``, same shape.
    """
    xp = _xp(x)
    if xp is np:
        x = np.asarray(x, dtype=np.float64)
    return xp.sign(x) * (xp.sqrt(xp.abs(x) + 1.0) - 1.0) + eps * x


def muzero_h_inv(y, eps: float = MUZERO_EPS):
    """Exact inverse of :func:`muzero_h`.

    With ``s = sqrt(|x| + 1)``, ``|y| = s - 1 + eps (s**2 - 1)`` is a quadratic in ``s``; its
    root is written ``2c / (1 + sqrt(1 + 4 eps c))`` with ``c = 1 + eps + |y|``, which has no
    cancellation and also holds for ``eps = 0``.
    """
    xp = _xp(y)
    if xp is np:
        y = np.asarray(y, dtype=np.float64)
    c = 1.0 + eps + xp.abs(y)
    s = 2.0 * c / (1.0 + xp.sqrt(1.0 + 4.0 * eps * c))
    return xp.sign(y) * (s * s - 1.0)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output for state ``x``, vectorised (uint64 arithmetic wraps, as intended).

    Args:
        x: any integer array; reinterpreted as uint64 (negative int64 values wrap).

    Returns:
        uint64 array, same shape.
    """
    x = np.asarray(x)
    x = x.view(np.uint64) if x.dtype == np.int64 else x.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
