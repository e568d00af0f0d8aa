"""What ``vh trunk train`` minimises: the masked policy cross-entropy, and the auxiliary
tile-counts read-out that keeps the pooled vector aware of what is on the board.

Why the auxiliary loss: a policy alone learns features that do not depend on how far the
game has gone (which move to make hardly depends on whether the big tile is a 512 or a
4096), and the mean-pooled vector loses that. Measured on the demo's dataset (tiny trunk,
ordinal milestones 1024/2048/4096, a logistic-regression probe on 108 unseen test runs), the
policy-only trunk's embeddings left the probe at the base rates (NLL 0.618 against 0.628 at
4096, even after 3 epochs over all 221k training rows) where a RANDOM trunk's gave 0.501.
Predicting the run's final score as well (AlphaZero's value) overfits the 131 training runs
(0.514). What works is asking the pooled vector to keep what is on the board: a linear
read-out (``tile_counts``, Linear(H, V)) must give how many cells hold each tile value, as a
mean squared error of the counts standardised by the training rows. It uses no outcome, so
it leaks nothing about any run's future; with it the probe reached 0.488, and the policy
learnt as well as alone. The read-out is trained and resumed with the rest but is not part
of the init dir (its ``model.safetensors`` holds the Encoder's tensors only).

Axes: B = a batch, 4 = moves (UDLR), V = token vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vh.extract.encoder import Encoder
from vh.extract.trunk_config import TrunkConfig
from vh.extract.trunk_data import CountsScale


def masked_ce(logits: torch.Tensor, legal: torch.Tensor, move: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of ``move`` under the softmax over the legal moves, float32 (B,).

    ``logsumexp`` over the legal logits minus the recorded move's logit: illegal moves get
    no probability and no gradient. The recorded move must be legal (:func:`read_moves`).
    """
    masked = logits.float().masked_fill(~legal, float("-inf"))
    return F.cross_entropy(masked, move, reduction="none")


def masked_argmax(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """The legal move with the highest logit, int64 (B,)."""
    return logits.float().masked_fill(~legal, float("-inf")).argmax(dim=1)


COUNTS = "tile_counts"  # the auxiliary read-out's module name (its tensors: tile_counts.*)


class TrainNet(Encoder):
    """The Encoder being trained, plus the auxiliary ``tile_counts`` read-out when the
    objective has one. It is registered after every Encoder module, so the Encoder's seeded
    weights (:meth:`Encoder.init_weights` draws in module order) do not depend on it."""

    def __init__(self, cfg: TrunkConfig, counts: bool):
        super().__init__(cfg)
        self.tile_counts = nn.Linear(cfg.hidden_size, cfg.input_vocab_size) if counts else None

    def heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One trunk pass: ``(policy logits (B, 4), counts read-out (B, V) or None)``."""
        pooled = self.hidden(tokens).mean(dim=1)  # as Encoder.forward pools for its heads
        counts = self.tile_counts(pooled) if self.tile_counts is not None else None
        return self.policy_head(pooled), counts

    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        """The Encoder's own tensors (the init dir's ``model.safetensors``), on the CPU."""
        return {
            k: v.detach().to("cpu").contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(COUNTS + ".")
        }


@dataclass(frozen=True)
class Objective:
    """The loss of a batch: the masked policy cross-entropy plus ``weight`` times the mean
    (over token values) squared error of the standardised tile counts read out of the pooled
    vector (see the module docstring). ``weight`` 0: the policy alone, no read-out."""

    weight: float
    scale: CountsScale | None = None  # the training rows' count statistics (weight > 0)
    # the statistics as tensors, per device, made once (not copied to a GPU every batch)
    _on: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def counts(self) -> bool:
        return self.weight > 0

    def losses(self, model: TrainNet, tok, legal, move):
        """``(policy CE (B,), counts squared error (B,) or None, policy logits)``."""
        logits, read = model.heads(tok)
        ce = masked_ce(logits, legal, move)
        if read is None:
            return ce, None, logits
        if tok.device not in self._on:
            self._on[tok.device] = tuple(
                torch.as_tensor(a, device=tok.device) for a in (self.scale.mean, self.scale.std)
            )
        mean, std = self._on[tok.device]
        counts = F.one_hot(tok, read.shape[1]).sum(dim=1).float()
        return ce, (((read.float() - (counts - mean) / std) ** 2).mean(dim=1)), logits

    def total(self, ce: torch.Tensor, se: torch.Tensor | None) -> torch.Tensor:
        """The scalar that is minimised."""
        return ce.mean() if se is None else ce.mean() + self.weight * se.mean()


class Sums:
    """Running sums of a pass: policy CE, correct moves, counts squared error, rows."""

    def __init__(self):
        self.ce, self.correct, self.se, self.rows = 0.0, 0, 0.0, 0

    def add(self, ce, se, logits, legal, move) -> None:
        self.ce += float(ce.detach().sum())
        self.se += float(se.detach().sum()) if se is not None else 0.0
        self.correct += int((masked_argmax(logits.detach(), legal) == move).sum())
        self.rows += int(move.shape[0])

    def figures(self, counts: bool) -> dict[str, float]:
        """``loss`` (policy CE), ``accuracy`` and, with the read-out, ``counts_mse``."""
        n = self.rows or float("nan")
        out = {"loss": self.ce / n, "accuracy": self.correct / n}
        return {**out, "counts_mse": self.se / n} if counts else out
