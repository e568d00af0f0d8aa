"""``vh trunk train``: train the trunk's ``Encoder`` on a dataset's recorded moves.

The network is the ecosystem's :class:`~vh.extract.encoder.Encoder` with its ``action_policy``
head (``policy_head``, Linear(H, 4) on the mean-pooled ``final_ln`` output), so the result is
an ordinary init dir that :func:`vh.extract.trunk.load_trunk` opens strictly. The loss is the
cross-entropy of the recorded move under the softmax over the LEGAL moves only
(:func:`~vh.extract.trunk_objective.masked_ce`; the rows and their legal moves come from :mod:`vh.extract.trunk_data`),
plus ``counts_weight`` times an auxiliary loss (:class:`~vh.extract.trunk_objective.Objective`).

Why the auxiliary loss, and what it is: :mod:`vh.extract.trunk_objective`.

Which rows: the TRAINING runs of the hash split ``vh fit`` makes by default
(:func:`vh.heads.splits.split_runs`, ``fit.split``'s default seed and fractions unless a
config says otherwise); validation runs give the accuracy reported; test runs are never read
into the model. The init dir records the rule (:mod:`vh.extract.trunk_record`) so that
``vh eval`` can tell when a head's test runs were seen by its trunk.

Determinism and resume: the weights start from :meth:`Encoder.init_weights` (numpy, seeded),
each epoch's order is a permutation from one seeded PCG64 stream, and on CPU torch runs its
deterministic algorithms. After every epoch the model, AdamW's state, the epoch and the
stream's state are written as a safetensors file plus ``train_state.json`` (no pickle; see
:mod:`vh.extract.trunk_state`), so a killed run, or a rerun asking for more epochs, continues
bit for bit where the last finished epoch left off. The learning rate is constant for that
reason (a schedule over "all epochs" would change with ``--epochs``).

Axes: N = rows, B = a batch, 16 = cells / tokens, 4 = moves (UDLR).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vh import durable
from vh.config import SplitConfig, TrunkTrainConfig, validate
from vh.errors import VhError
from vh.extract.board import MAX_EXP
from vh.extract.dataset import open_dataset
from vh.extract.trunk_config import PRESETS, TrunkConfig, preset_config
from vh.extract.trunk_data import CountsScale, Moves, baselines, cap_rows, read_moves
from vh.extract.trunk_objective import Objective, Sums, TrainNet
from vh.extract.trunk_record import RECORD_KEY, id_ranges, ids_sha256, split_record
from vh.extract.trunk_state import (
    INIT_FILES,
    TrainState,
    clear_state,
    link_state,
    read_state,
    write_state,
)
from vh.heads.splits import TRAIN, VAL, check_nonempty, split_runs
from vh.progress import Progress, say

EVAL_BATCH = 4096  # rows per forward when measuring accuracy (no gradients kept)


# --------------------------------------------------------------------------- the trunk config


def resolve_config(
    preset: str | None, config: str | os.PathLike | None, vocab: int
) -> tuple[dict, str]:
    """The config.json to train: a preset, or a given file checked by ``TrunkConfig``.

    The head becomes ``action_policy`` (a given binned_ev head or value head is dropped: only
    the policy head is trained). Returns ``(raw config, where it came from)``.
    """
    if preset is not None and config is not None:
        raise VhError("give --preset or --config, not both", field="--config")
    if config is None:
        preset = preset or "tiny"
        if preset not in PRESETS:
            raise VhError(
                f"unknown preset {preset!r} (valid: {', '.join(PRESETS)})", field="--preset"
            )
        return preset_config(preset, vocab=vocab, head_type="action_policy"), f"preset {preset}"
    raw = durable.read_json(config, "config.json")
    TrunkConfig.from_dict(raw, config)  # every field's type and range, as load_trunk checks
    raw = {k: v for k, v in raw.items() if k not in (RECORD_KEY, "vh_init")}
    raw.update(head_type="action_policy", output_n_bins=None, value_head=None)
    return raw, str(config)


def _check_vocab(cfg: TrunkConfig, max_exponent: int, where: str) -> None:
    if max_exponent >= cfg.input_vocab_size:
        raise VhError(
            f"the dataset holds tile exponent {max_exponent} but the trunk's vocab is "
            f"{cfg.input_vocab_size} (17 embeds the 65536 tile)",
            path=where,
            field="input_vocab_size",
        )


# --------------------------------------------------------------------------- training


@contextlib.contextmanager
def deterministic(device: torch.device, seed: int, threads: int = 0):
    """Torch's deterministic algorithms, seed and ``threads`` (0: as they are) while training
    on CPU; restored after."""
    was, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.manual_seed(seed)  # nothing here draws from torch's RNG; set anyway, for SDPA & co
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        if threads > 0:
            torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(was_threads)


def _batch(data: Moves, idx: np.ndarray, device: torch.device):
    tok = torch.from_numpy(data.tokens[idx].astype(np.int64)).to(device)
    legal = torch.from_numpy(data.legal[idx]).to(device)
    move = torch.from_numpy(data.move[idx]).to(device)
    return tok, legal, move


def train_epoch(
    model: TrainNet, opt, data: Moves, order: np.ndarray, batch: int, device, objective: Objective,
    prog=None,
) -> dict[str, float]:  # fmt: skip
    """One pass over ``data`` in ``order``: the running figures of its batches (:class:`Sums`)."""
    model.train()
    sums = Sums()
    for i in range(0, len(order), batch):
        tok, legal, move = _batch(data, order[i : i + batch], device)
        ce, se, logits = objective.losses(model, tok, legal, move)
        opt.zero_grad(set_to_none=True)
        objective.total(ce, se).backward()
        opt.step()
        sums.add(ce, se, logits, legal, move)
        if prog is not None:
            prog.update(move.shape[0], f"loss {sums.ce / sums.rows:.3f} "
                        f"acc {sums.correct / sums.rows:.3f}")  # fmt: skip
    return sums.figures(objective.counts)


@torch.no_grad()
def evaluate(model: TrainNet, data: Moves, device, objective: Objective) -> dict[str, float]:
    """The figures of :class:`Sums` over ``data`` (nan without rows)."""
    model.eval()
    sums = Sums()
    for i in range(0, len(data), EVAL_BATCH):
        tok, legal, move = _batch(data, np.arange(i, min(i + EVAL_BATCH, len(data))), device)
        sums.add(*objective.losses(model, tok, legal, move), legal, move)
    return sums.figures(objective.counts)


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_trunk` did: the init dir, its record, and this run's share."""

    out: Path
    record: dict
    epochs_run: int  # epochs trained by this call (0: already complete)
    rows_per_s: float  # training rows/s of this call (0 without epochs)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise VhError("CUDA is not available on this machine", field="--device")
    return torch.device(name)


def _check_split(cfg: SplitConfig) -> None:
    if (cfg.train_where + cfg.val_where + cfg.test_where).strip():
        raise VhError(
            "trunk training takes a hash split only (no SQL predicates): the record must "
            "let vh eval rebuild it from run ids",
            field="fit.split",
        )
    validate(cfg, "fit.split.")


def _runs_identity(ds) -> str:
    """sha256 of the runs table (ids, steps, scores, tiles, seeds): which dataset this is."""
    r = ds.runs
    cols = (r.id, r.steps, r.final_score, r.highest_tile, r.seed)
    return ids_sha256(np.concatenate([np.asarray(c, np.int64) for c in cols]))


def train_trunk(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    tcfg: TrunkTrainConfig,
    *,
    preset: str | None = None,
    config: str | os.PathLike | None = None,
    split: SplitConfig | None = None,
    max_rows: int = 0,
    overwrite: bool = False,
    log=say,
) -> TrainResult:
    """Train a trunk on the training runs' moves and write the init dir ``out``.

    Args:
        dataset: the dataset dir.
        out: the init dir (config.json, model.safetensors, the train state).
        tcfg: epochs, batch size, lr, weight decay, seed, device.
        preset: a key of ``PRESETS`` (default tiny), or
        config: a trunk config.json to train instead.
        split: the hash split (default: ``fit.split``'s defaults, as ``vh fit``).
        max_rows: train on at most this many training rows, a seeded random subset of all
            training runs' rows (0: all of them); a cheap trunk for ``vh demo``.
        overwrite: start again over an init dir vh wrote (else it resumes or is refused).
        log: receives progress lines.

    Returns:
        A :class:`TrainResult`.
    """
    split = split if split is not None else SplitConfig()
    validate(tcfg, "trunk.")
    if max_rows < 0:
        raise VhError(f"must be 0 (all rows) or more, got {max_rows}", field="max_rows")
    _check_split(split)
    device = _device(tcfg.device)
    inputs = {"--dataset": dataset, "--config": config}
    durable.check_not_input(out, inputs)

    # ---- inputs, all checked before --out is touched
    ds = open_dataset(dataset)
    scan = ds.validate()
    vocab = 17 if scan.max_exponent >= MAX_EXP else 16
    raw, where = resolve_config(preset, config, vocab)
    cfg = TrunkConfig.from_dict(raw, where)
    _check_vocab(cfg, scan.max_exponent, where)
    run_ids = np.asarray(ds.runs.id, np.int64)
    codes = split_runs(run_ids, split)
    check_nonempty(codes, run_ids, split)
    identity = _identity(raw, ds, split, tcfg, max_rows)

    # ---- the output: resume, refuse, or start
    durable.recover_dir(out)
    state = _prepare_out(Path(out), identity, tcfg.epochs, overwrite)
    done = _read_record(Path(out))
    if state is not None and state.epoch == tcfg.epochs == done.get("epochs"):
        if log is not None:
            log(f"trunk train: {out} already holds {state.epoch} epochs; nothing to do")
        return TrainResult(Path(out), done, 0, 0.0)
    data, dropped = read_moves(ds, codes, (TRAIN, VAL))
    train, val = data[TRAIN], data[VAL]
    available = len(train)
    train = cap_rows(train, max_rows, tcfg.seed)
    if not len(train):
        raise VhError("no training rows with a legal recorded move", path=dataset, field="move")
    durable.claim(out, "init")
    objective = Objective(
        tcfg.counts_weight,
        CountsScale.of(train.tokens, cfg.input_vocab_size) if tcfg.counts_weight else None,
    )
    record = {
        **_data_record(dataset, split, run_ids, codes, identity),
        "rows": {"train": len(train), "val": len(val), "dropped_illegal_move": dropped},
        **({"max_rows": int(max_rows), "train_rows_available": available} if max_rows else {}),
        "source": where,
        "objective": {"policy_ce": 1.0, "tile_counts_mse": tcfg.counts_weight},
        "optimizer": "AdamW",
        "device": tcfg.device,
        "threads": tcfg.threads or torch.get_num_threads(),
        **{k: identity[k] for k in ("batch_size", "lr", "wd", "seed")},
        "val_baselines": baselines(train, val),
    }
    model, history, ran, seconds = _train_epochs(
        Path(out), TrainNet(cfg, objective.counts), (train, val), tcfg, objective, state,
        identity, device, log,
    )  # fmt: skip
    record.update(_final_figures(history))
    _write_init_dir(Path(out), model.encoder_tensors(), raw, record)
    return TrainResult(Path(out), record, ran, ran * len(train) / seconds if seconds > 0 else 0.0)


def _identity(raw: dict, ds, split: SplitConfig, tcfg: TrunkTrainConfig, max_rows: int) -> dict:
    """The settings a resume must share with the run it continues."""
    identity = {
        "config": raw,
        "dataset_runs_sha256": _runs_identity(ds),
        "split": split_record(split),
        **{k: getattr(tcfg, k) for k in ("batch_size", "lr", "wd", "seed")},
    }
    # recorded only when not their "off" value (IDENTITY_OFF), which is what a record
    # written before the option existed means
    if max_rows:
        identity["max_rows"] = int(max_rows)
    if tcfg.counts_weight:
        identity["counts_weight"] = tcfg.counts_weight
    return identity


# settings of the identity that a record may lack: their value then (the policy alone, all rows)
IDENTITY_OFF = {"max_rows": 0, "counts_weight": 0.0}
# how a user sets each one
IDENTITY_FLAGS = {"counts_weight": "--counts-weight", "max_rows": "max_rows (vh demo's cap)"}


def _identity_differences(recorded: dict, asked: dict) -> list[str]:
    """``name: recorded -> asked`` of every setting that differs (a missing optional one
    counts as its off value)."""
    out = []
    for k in sorted(set(recorded) | set(asked)):
        was, now = recorded.get(k, IDENTITY_OFF.get(k)), asked.get(k, IDENTITY_OFF.get(k))
        if was != now:
            shown = (
                k if isinstance(was, (dict, list)) else f"{IDENTITY_FLAGS.get(k, k)} {was} -> {now}"
            )
            out.append(shown)
    return out


def _train_epochs(out: Path, model: TrainNet, data, tcfg, objective, state, identity, device, log):
    """The epochs still to run (from ``state`` when resuming), each followed by the train
    state; ``(model, history, epochs run, seconds)``."""
    with deterministic(device, tcfg.seed, tcfg.threads):
        model = model.init_weights(tcfg.seed).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.wd)
        rng = np.random.Generator(np.random.PCG64(tcfg.seed))
        history: list[dict] = []
        if state is not None:
            state.restore(model, opt, rng, device)
            history = list(state.history)
        start = len(history)
        t0 = time.perf_counter()
        for epoch in range(start, tcfg.epochs):
            history.append(_one_epoch(model, opt, rng, data, tcfg, objective, device, epoch, log))
            write_state(out, model, opt, rng, epoch + 1, history, identity)
            durable.kill_point("trunk-train:epoch")
        seconds = time.perf_counter() - t0
    return model, history, tcfg.epochs - start, seconds


def _data_record(dataset, split: SplitConfig, run_ids, codes, identity: dict) -> dict:
    """The record's account of which dataset and which of its runs were read."""
    return {
        "dataset": str(Path(dataset).resolve()),
        "dataset_runs_sha256": identity["dataset_runs_sha256"],
        "split": split_record(split),
        "dataset_runs": id_ranges(run_ids),
        "train_runs": {
            "count": int(np.sum(codes == TRAIN)),
            "sha256": ids_sha256(run_ids[codes == TRAIN]),
        },
        "val_runs": {"count": int(np.sum(codes == VAL))},
    }


def _one_epoch(model, opt, rng, data, tcfg, objective, device, epoch, log) -> dict:
    """Train one epoch, measure validation; the history entry (losses, accuracies, rows/s)."""
    train, val = data
    label = f"trunk train epoch {epoch + 1}/{tcfg.epochs}"
    prog = Progress(len(train), label, log=log)
    order = rng.permutation(len(train))
    tr = train_epoch(model, opt, train, order, tcfg.batch_size, device, objective, prog)
    seconds = prog.close(f"loss {tr['loss']:.3f} acc {tr['accuracy']:.3f}")
    va = evaluate(model, val, device, objective) if len(val) else {
        k: float("nan") for k in tr
    }  # fmt: skip
    if log is not None:
        counts = f", tile counts mse {tr['counts_mse']:.4f} / {va['counts_mse']:.4f}" if (
            objective.counts) else ""  # fmt: skip
        log(f"{label}: train loss {tr['loss']:.4f} acc {tr['accuracy']:.4f}, val loss "
            f"{va['loss']:.4f} acc {va['accuracy']:.4f}{counts}")  # fmt: skip
    return {
        "epoch": epoch + 1,
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "val_loss": va["loss"],
        "val_accuracy": va["accuracy"],
        **(
            {"train_counts_mse": tr["counts_mse"], "val_counts_mse": va["counts_mse"]}
            if objective.counts
            else {}
        ),  # fmt: skip
        "rows_per_s": len(train) / seconds if seconds > 0 else 0.0,
    }


def _final_figures(history: list[dict]) -> dict:
    """The record's figures from the last epoch (train: the running figures of its batches)."""
    last = history[-1]
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    keys += ("train_counts_mse", "val_counts_mse")
    return {"epochs": last["epoch"], **{k: last[k] for k in keys if k in last}, "history": history}


class OtherSettings(VhError):
    """``--out`` holds training started with other settings (``differs``: what differs)."""

    def __init__(self, out: Path, differs: list[str]):
        self.differs = differs
        super().__init__(
            f"holds training with other settings ({'; '.join(differs)}); rerun with the same "
            "ones to resume, or --overwrite (vh trunk train) to start again",
            path=out,
            field="--out",
            code=3,
        )


def _prepare_out(out: Path, identity: dict, epochs: int, overwrite: bool) -> TrainState | None:
    """The train state to resume from (None: start), after checking --out may be written."""
    if not os.path.lexists(out) or (out.is_dir() and not durable.entries(out)):
        return None
    durable.check_owned(out, "init", files=INIT_FILES)
    if overwrite:
        clear_state(out)
        return None
    state = read_state(out)
    if state is None:
        raise VhError(
            "holds a trunk that vh trunk train did not write (no train state); "
            "--overwrite replaces it",
            path=out,
            field="--out",
            code=3,
        )
    differs = _identity_differences(state.identity, identity)
    if differs:
        raise OtherSettings(out, differs)
    if state.epoch > epochs:
        raise VhError(
            f"already trained {state.epoch} epochs, more than --epochs {epochs}; "
            "--overwrite to start again",
            path=out,
            field="--epochs",
            code=3,
        )
    return state


def _read_record(out: Path) -> dict:
    """The record of the init dir in ``out`` ({} when there is none yet)."""
    rec = (durable.try_read_json(out / "config.json") or {}).get(RECORD_KEY)
    return rec if isinstance(rec, dict) else {}


def _write_init_dir(out: Path, weights: dict, raw: dict, record: dict) -> None:
    """config.json (with the record) + model.safetensors + the train state, as one folder
    swap: a kill leaves the previous init dir or this one, never a mix."""
    from safetensors.torch import save_file

    import vh

    tmp = durable.temp_dir(out)
    durable.claim(tmp, "init")
    link_state(out, tmp)
    durable.atomic_write(tmp / "model.safetensors", lambda p: save_file(weights, p))
    config = {**raw, RECORD_KEY: {**record, "vh_version": vh.__version__}}
    durable.atomic_write_json(tmp / "config.json", config, indent=2)
    durable.replace_dir(tmp, out)
