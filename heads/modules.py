"""Head modules (Flax linen), chosen by name from :data:`ARCHS`.

- ``probe``: Linear(D → out).
- ``mlp``: LayerNorm(D) → Linear(D → H) → GELU → Dropout → Linear(H → out). The LayerNorm
  has no scale and bias of its own: the Linear after it absorbs them (``W·(s⊙n + b) =
  (W·diag s)·n + W·b``, the same functions), and their gradient would cost a third D×H
  matmul per step (the gradient through the normalisation): 1.7× faster without (measured).

The output layer is shared: a plain Dense named ``out``, or, for monotone ordinal heads, one
score ``s = Dense(1, no bias)`` named ``score`` plus ordered cut points
``t_k = cut_b - cumsum(softplus(cut_inc))_k``, logits ``s + t_k``: the logits decrease in k
for every input, so ``q_1 >= q_2 >= … >= q_K`` by construction. ``small_init`` draws the last
layer's kernel from N(0, 0.01²) so a fresh head predicts near the label prior.

Inputs may be float16 (the cache's dtype); heads compute in float32.

Dropout masks come from a counter-based integer hash of (a per-step seed, element index)
(:class:`HashDropout`) rather than ``jax.random.bernoulli``: on CPU, threefry (and rbg) draw
a [65536, 1024] mask in ~3 s, three times the layer's own matmul, while the hash takes 0.07 s
(measured on the 2-core machine). The seed is still drawn from the step's dropout key, so
masks are reproducible and differ per step and per grid member.
Flat parameter names join the Flax path with dots: ``out.kernel`` [D or H, out],
``out.bias``, ``hidden.kernel`` [D, H], ``hidden.bias``, ``score.kernel`` [D or H, 1],
``cut_b`` [], ``cut_inc`` [K].

Axis legend: n rows, D embedding width, H hidden width, K thresholds (= out).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vh.config import HeadConfig
from vh.errors import VhError
from vh.heads.targets import TargetSpec


def _output(
    module: nn.Module, h: jax.Array, n_out: int, monotone: bool, small_init: bool
) -> jax.Array:
    """The last layer of every head (called inside the parent's compact ``__call__``)."""
    init = nn.initializers.normal(0.01) if small_init else nn.initializers.lecun_normal()
    if not monotone:
        return nn.Dense(n_out, kernel_init=init, name="out")(h)
    score = nn.Dense(1, use_bias=False, kernel_init=init, name="score")(h)  # (n, 1)
    b = module.param("cut_b", nn.initializers.zeros, ())
    # softplus(log(e - 1)) = 1: initial cut points one logit apart
    inc = module.param("cut_inc", nn.initializers.constant(math.log(math.e - 1)), (n_out,))
    return score + (b - jnp.cumsum(jax.nn.softplus(inc)))[None, :]  # (n, K)


def _lowbias32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser with low bias (C. Wellons' lowbias32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class HashDropout(nn.Module):
    """Inverted dropout whose mask hashes the element index with a seed from the rng.

    Element counters wrap past 2^32 elements per call (4M rows at H = 1024), repeating masks
    beyond that.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
        n, h = x.shape  # (n, H)
        idx = jax.lax.broadcasted_iota(jnp.uint32, x.shape, 0) * jnp.uint32(
            h
        ) + jax.lax.broadcasted_iota(jnp.uint32, x.shape, 1)
        u = _lowbias32(idx ^ (seed * jnp.uint32(0x9E3779B9)))
        keep = u >= jnp.uint32(min(int(self.rate * 2.0**32), 2**32 - 1))
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class Probe(nn.Module):
    """Linear probe D → out."""

    n_out: int
    monotone: bool = False
    small_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return _output(self, x.astype(jnp.float32), self.n_out, self.monotone, self.small_init)


class MLP(nn.Module):
    """LayerNorm → Linear(D → H) → GELU → Dropout → Linear(H → out)."""

    n_out: int
    hidden: int = 1024
    dropout: float = 0.1
    monotone: bool = False
    small_init: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = nn.LayerNorm(use_scale=False, use_bias=False, name="ln")(x.astype(jnp.float32))
        h = nn.gelu(nn.Dense(self.hidden, name="hidden")(h))
        h = HashDropout(self.dropout, name="dropout")(h, deterministic=not train)
        return _output(self, h, self.n_out, self.monotone, self.small_init)


ARCHS = {"probe": Probe, "mlp": MLP}


def make_head(arch: str, spec: TargetSpec, cfg: HeadConfig) -> nn.Module:
    """Build the head named ``arch`` for ``spec``.

    Args:
        arch: a key of :data:`ARCHS`.
        spec: the target (gives the output width and monotone flag).
        cfg: head options (hidden width, dropout, small init).

    Returns:
        An unbound Flax module; ``apply({"params": p}, x, train=…)`` gives logits [n, out].
    """
    if arch not in ARCHS:
        raise VhError(f"unknown head (valid: {', '.join(ARCHS)})", field="fit.head.arch")
    common = {"n_out": spec.n_out, "monotone": spec.monotone, "small_init": cfg.small_init}
    if arch == "mlp":
        return MLP(hidden=cfg.hidden, dropout=cfg.dropout, **common)
    return Probe(**common)


def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested Flax params → ``{"out.kernel": array, …}`` (float32 numpy)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        flat[".".join(str(p.key) for p in path)] = np.asarray(leaf, np.float32)
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of :func:`flatten_params`."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# the affine map of a probe is numpy-only: it lives in vh.heads.affine (export and play read
# it without importing jax) and is re-exported here
from vh.heads.affine import linear_map  # noqa: E402, F401
