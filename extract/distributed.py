"""Several extract workers: the torchrun environment, barriers and rank 0's decisions.

``torchrun --nproc-per-node N -m vh extract ...`` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK set (across hosts: the same on each host, on a shared filesystem).
Rank 0 prepares the cache and broadcasts what it decided (or the error it hit, so every rank
stops with the same one-line message instead of hanging at a barrier); each rank then embeds
its own disjoint units; rank 0 finishes.

The process group is always gloo, also on GPUs: workers exchange only small Python objects
and barriers, never tensors, so NCCL would add a dependency and nothing else.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vh.errors import VhError

# rank 0 hashes, validates and writes the columns while the others wait at the first barrier,
# and ranks wait for the slowest one at the last: far longer than gloo's 30-minute default
_TIMEOUT = datetime.timedelta(hours=48)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits among the workers.

    Attributes:
        rank: this worker's index in ``[0, world)``.
        world: number of workers (1 without torchrun).
        local_rank: index on this host (picks the GPU).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (defaults: one worker)."""
        try:
            env = cls(
                int(os.environ.get("RANK", 0)),
                int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)),
            )
        except ValueError as e:
            raise VhError(f"bad torchrun environment ({e})", field="RANK/WORLD_SIZE") from None
        if not 0 <= env.rank < env.world:
            raise VhError(f"RANK {env.rank} outside WORLD_SIZE {env.world}", field="RANK")
        return env

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self) -> None:
        """Join the process group (only with several workers)."""
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(
                    "gloo", rank=self.rank, world_size=self.world, timeout=_TIMEOUT
                )

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and give every rank its result, or raise its VhError everywhere.

        Args:
            fn: the work only rank 0 does; returns a picklable value.

        Returns:
            ``fn()``'s value on every rank.
        """
        if self.world == 1:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except VhError as e:
                error, box[0] = e, ("vh", (e.message, e.path, e.field, e.code))
            except BaseException as e:  # a bug: the others must still not hang
                error, box[0] = e, ("crash", f"{type(e).__name__}: {e}")
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "vh":
            message, path, field, code = value
            raise VhError(message, path=path, field=field, code=code)
        if kind == "crash":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (a barrier that also carries a result)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values
