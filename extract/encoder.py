"""The trunk network: the ``Encoder`` (a bidirectional GQA transformer over the 16 cells)
and its parts (attention, RMSNorm-ed blocks, SwiGLU, the exported value heads).

The parameter names below ARE the checkpoint format of the existing 2048 trunks (DESIGN §2);
renaming a submodule breaks loading them::

    tok_emb.weight                         (V, H)
    pos_emb.pos_emb.weight                 (max_pos, H)
    blocks.{i}.attn_norm.weight            (H,)         RMSNorm, eps = layer_norm_eps
    blocks.{i}.attn.wq.weight              (nh·hd, H)   no biases in attn / mlp
    blocks.{i}.attn.wk.weight              (nkv·hd, H)
    blocks.{i}.attn.wv.weight              (nkv·hd, H)
    blocks.{i}.attn.wo.weight              (H, H)
    blocks.{i}.attn.q_norm.weight          (hd,)        use_qk_norm
    blocks.{i}.attn.k_norm.weight          (hd,)        use_qk_norm
    blocks.{i}.attn.sinks                  (nh,)        use_attention_sinks, layout (nkv, g)
    blocks.{i}.mlp_norm.weight             (H,)
    blocks.{i}.mlp.w_gate.weight           (F, H)       SwiGLU: w_down(silu(w_gate x) * w_up x)
    blocks.{i}.mlp.w_up.weight             (F, H)
    blocks.{i}.mlp.w_down.weight           (H, F)
    final_ln.weight                        (H,)
    ev_heads.{0..3}.weight / .bias         (bins, H)    head_type binned_ev
    policy_head.weight / .bias             (4, H)       head_type action_policy
    value_head.weight / .bias              (out, H)     value_head block, arch probe
    value_head.ln.weight / .bias           (H,)         value_head block, arch mlp: LayerNorm,
    value_head.fc1.weight / .bias          (hidden, H)    eps 1e-6 (flax's default), then
    value_head.fc2.weight / .bias          (out, hidden)  GELU, then fc2 (torch layout: out, in)
    value_pre_pool_norm.weight             (H,)         value_head.pre_pool_mlp (older trunks)
    value_pre_pool_mlp.w_gate/w_up/w_down  as mlp

GQA: query head ``h`` uses key/value head ``h mod nkv`` (queries viewed as ``(g, nkv)``,
group-major), NOT repeat-interleave's ``h // g``; sink ``h`` is ``sinks[(h mod nkv)·g + h // nkv]``.

Axes: B = boards, S = tokens (16 cells), H = hidden, nh = query heads, nkv = key/value heads,
g = nh // nkv query heads per kv head, hd = H // nh, F = intermediate size, V = vocab.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vh.errors import VhError
from vh.extract.trunk_config import TrunkConfig

VALUE_LN_EPS = 1e-6  # flax nn.LayerNorm's default epsilon: the JAX heads are trained with it


class Attention(nn.Module):
    """Bidirectional GQA self-attention, optional per-head q/k RMSNorm and learned sinks."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim(),
        )
        self.g = cfg.groups()
        H = cfg.hidden_size
        self.wq = nn.Linear(H, self.nh * self.hd, bias=False)
        self.wk = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.wv = nn.Linear(H, self.nkv * self.hd, bias=False)
        self.wo = nn.Linear(H, H, bias=False)
        qk = cfg.use_qk_norm
        self.q_norm = nn.RMSNorm(self.hd, eps=cfg.layer_norm_eps) if qk else None
        self.k_norm = nn.RMSNorm(self.hd, eps=cfg.layer_norm_eps) if qk else None
        self.sinks = nn.Parameter(torch.zeros(self.nh)) if cfg.use_attention_sinks else None
        self.sdpa = True  # False: the explicit softmax path even without sinks (tests compare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, H = x.shape
        q = self.wq(x).view(B, S, self.nh, self.hd)
        k = self.wk(x).view(B, S, self.nkv, self.hd)
        v = self.wv(x).view(B, S, self.nkv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        # query head h = gi·nkv + kv: fold the g query heads of each kv head into the query
        # axis, so K and V are shared without copies and rows stay independent
        q = q.view(B, S, self.g, self.nkv, self.hd).permute(0, 3, 2, 1, 4)  # (B, nkv, g, S, hd)
        q = q.reshape(B, self.nkv, self.g * S, self.hd)  # (B, nkv, g·S, hd)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, nkv, S, hd)
        if self.sinks is None and self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = self._explicit(q, k, v)
        o = o.view(B, self.nkv, self.g, S, self.hd).permute(0, 3, 2, 1, 4)  # (B, S, g, nkv, hd)
        return self.wo(o.reshape(B, S, H))

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention with the sink logit as an extra column (dropped after)."""
        B, nkv, GS, _ = q.shape
        S = k.shape[2]
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.hd)  # (B, nkv, g·S, S)
        if self.sinks is not None:
            # layout (nkv, g): row (kv, gi, ·) of the folded queries takes sinks[kv·g + gi]
            sink = self.sinks.float().view(nkv, self.g, 1, 1).expand(nkv, self.g, S, 1)
            sink = sink.reshape(1, nkv, GS, 1).expand(B, nkv, GS, 1)
            scores = torch.cat([scores, sink], dim=-1)  # (B, nkv, g·S, S + 1)
        p = torch.softmax(scores, dim=-1)[..., :S].to(v.dtype)
        return p @ v  # (B, nkv, g·S, hd)


class SwiGLU(nn.Module):
    """``w_down(silu(w_gate x) * w_up x)``, no biases."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.w_up = nn.Linear(hidden, inner, bias=False)
        self.w_gate = nn.Linear(hidden, inner, bias=False)
        self.w_down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(attn_norm x)``, then ``x + mlp(mlp_norm x)``."""

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.attn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class PositionEmbedding(nn.Module):
    """Holds ``pos_emb`` so the checkpoint key is ``pos_emb.pos_emb.weight``."""

    def __init__(self, max_pos: int, hidden: int):
        super().__init__()
        self.pos_emb = nn.Embedding(max_pos, hidden)


class MlpValueHead(nn.Module):
    """LayerNorm(eps 1e-6) → fc1 → GELU → fc2: the JAX ``mlp`` head, exported."""

    def __init__(self, dim: int, hidden: int, out: int, activation: str):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=VALUE_LN_EPS)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln(x)), approximate=self.approximate))


class Encoder(nn.Module):
    """The 2048 trunk (see the module docstring for its parameter names).

    ``forward(tokens)`` returns ``(hidden (B, S, H), head logits, value)``: head logits are
    ``(B, 4, bins)`` for binned_ev or ``(B, 4)`` for action_policy; value is ``None`` without
    a value head, else ``(B,)`` (mse) or ``(B, vocab_size)``. Run it under
    ``torch.inference_mode()``; there is no dropout (the trunk is frozen).
    """

    def __init__(self, cfg: TrunkConfig):
        super().__init__()
        self.config = cfg
        H = cfg.hidden_size
        self.tok_emb = nn.Embedding(cfg.input_vocab_size, H)
        self.pos_emb = PositionEmbedding(cfg.max_position_embeddings, H)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_ln = nn.RMSNorm(H, eps=cfg.layer_norm_eps)
        binned = cfg.head_type == "binned_ev"
        self.ev_heads = (
            nn.ModuleList(nn.Linear(H, cfg.output_n_bins) for _ in range(4)) if binned else None
        )
        self.policy_head = None if binned else nn.Linear(H, 4)
        self.value_head, self.value_pre_pool_norm, self.value_pre_pool_mlp = None, None, None
        vh = cfg.value_head
        if vh is not None:
            self.value_head = (
                nn.Linear(H, vh.out_dim())
                if vh.arch == "probe"
                else MlpValueHead(H, vh.hidden, vh.out_dim(), vh.activation)
            )
            if vh.pre_pool_mlp:
                self.value_pre_pool_norm = nn.RMSNorm(H, eps=cfg.layer_norm_eps)
                self.value_pre_pool_mlp = SwiGLU(H, cfg.intermediate_size)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """``final_ln`` output, (B, S, H), for integer tokens (B, S)."""
        S = tokens.shape[1]
        x = self.tok_emb(tokens.long()) + self.pos_emb.pos_emb.weight[:S]  # (B, S, H)
        for blk in self.blocks:
            x = blk(x)
        return self.final_ln(x)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The board embedding: mean over tokens of ``final_ln``'s output, float32 (B, H)."""
        return self.hidden(tokens).mean(dim=1, dtype=torch.float32)

    def forward(self, tokens: torch.Tensor):
        x = self.hidden(tokens)
        pooled = x.mean(dim=1)  # (B, H), in the model's dtype as the heads were trained
        if self.ev_heads is not None:
            logits = torch.stack([h(pooled) for h in self.ev_heads], dim=1)  # (B, 4, bins)
        else:
            logits = self.policy_head(pooled)  # (B, 4)
        value = self._value(x) if self.value_head is not None else None
        return x, logits, value

    def value(self, tokens: torch.Tensor) -> torch.Tensor:
        """The exported value head's output: (B,) for mse, (B, vocab_size) otherwise."""
        if self.value_head is None:
            raise VhError(
                "this trunk has no value head (config.json has no value_head block)",
                field="value_head",
            )
        return self._value(self.hidden(tokens))

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        if self.value_pre_pool_mlp is not None:
            x = x + self.value_pre_pool_mlp(self.value_pre_pool_norm(x))
        out = self.value_head(x.mean(dim=1))
        return out.squeeze(-1) if self.config.value_head.objective == "mse" else out

    def use_sdpa(self, on: bool = True) -> Encoder:
        """Choose SDPA (default) or the explicit softmax path where there are no sinks."""
        for blk in self.blocks:
            blk.attn.sdpa = on
        return self

    @torch.no_grad()
    def init_weights(self, seed: int) -> Encoder:
        """Seeded random weights: N(0, 0.02) matrices, unit norms, zero biases, N(0, 1) sinks.

        Drawn with numpy's PCG64 in module order, so the weights do not depend on torch's
        RNG (or its version) and golden values stay put.
        """
        rng = np.random.default_rng(seed)

        def normal(p: torch.Tensor, std: float) -> None:
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape), dtype=np.float32) * std))

        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                normal(m.weight, 0.02)
            elif isinstance(m, (nn.RMSNorm, nn.LayerNorm)):
                m.weight.fill_(1.0)
            elif isinstance(m, Attention) and m.sinks is not None:
                normal(m.sinks, 1.0)  # O(1) logits: the sinks take a visible share
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        return self
