"""Many processes, one job: the ranks of a ``torchrun`` launch and the collectives featgs uses.

``torchrun --nproc_per_node N -m featgs train ...`` starts N copies of featgs with RANK,
WORLD_SIZE and LOCAL_RANK (and the rendezvous, MASTER_ADDR / MASTER_PORT) in their
environment. :func:`process_group` reads them, joins the processes (NCCL when they compute on
CUDA, each pinned to ``cuda:LOCAL_RANK``; gloo on the CPU) and tears the group down again; a
plain ``featgs train`` gets the one-rank :data:`SINGLE` and no process group at all.

Everything else sees a :class:`Ranks`, passed explicitly (no module state): which rank this
is, how many there are, where it computes, and the collectives, every one of which

- is a no-op (or the identity) for a single rank, so the same code runs with and without
  ``torchrun``;
- buckets: many tensors travel as one flat buffer per dtype (a bounded size each), one
  collective call per bucket;
- turns a failure of the transport (a rank that died, a peer that stopped answering within
  the group's timeout) into :class:`LostContact`, a one-line :class:`FeatgsError`.

Work that one rank does for all (writing run files, checking the run folder) goes through
:meth:`Ranks.on_main`, work that every rank does on its share through :meth:`Ranks.settle`:
both make an error on one rank an error on every rank (:class:`PeerFailed` on the others),
so no rank waits in a collective for a peer that has already given up.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, TypeVar

import torch
from torch import Tensor

from featgs.errors import FeatgsError

T = TypeVar("T")

# A collective that waits longer than this for a peer gives up (a rank that died is usually
# noticed at once: its sockets close).
TIMEOUT = timedelta(seconds=60)
BUCKET_BYTES = 64 << 20  # the most bytes one collective call carries


class LostContact(FeatgsError):
    """A collective failed: another rank died, or stopped answering within the timeout."""


class PeerFailed(FeatgsError):
    """Another rank stopped with an error (it reports the error itself); this rank stops too."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one job.

    Attributes:
        rank, world_size, local_rank: as torchrun numbers them (global rank, count, rank on
            this machine).
        backend: "nccl" or "gloo" while a process group is up; None without one.
        device: where this rank computes (``cuda:LOCAL_RANK`` under NCCL).
        timeout: how long a collective waits for the others.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout: timedelta = TIMEOUT

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, writes the run files and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group is up (even of one rank, as ``torchrun --nproc_per_node 1`` gives)."""
        return self.backend is not None

    @property
    def many(self) -> bool:
        """More than one rank: collectives have work to do."""
        return self.world_size > 1

    # -- who does what ---------------------------------------------------------------------
    def owns(self, index: int) -> bool:
        """Item ``index`` of a shared list (a view, a map) is this rank's: ``index % world == rank``."""
        return index % self.world_size == self.rank

    def shard(self, items: Sequence[T]) -> List[T]:
        """This rank's items of ``items``: every ``world_size``-th, from ``rank``."""
        return list(items[self.rank::self.world_size])

    def indices(self, n: int) -> List[int]:
        """This rank's indices of a list of ``n`` items."""
        return list(range(self.rank, n, self.world_size))

    def unshard(self, mine: Sequence[T]) -> List[T]:
        """The results of every rank's :meth:`shard` (``mine``: this rank's, one per item, in
        order), back in the order of the items they came from, on every rank."""
        if not self.many:
            return list(mine)
        shares = self.all_gather_objects(list(mine))
        out: List[T] = []
        for k in range(max(len(s) for s in shares)):
            out += [s[k] for s in shares if k < len(s)]
        return out

    def sum_objects(self, value: Any) -> Any:
        """The sum over the ranks of ``value`` (a number or tensor; None counts as nothing, and
        the sum of nothing is None), on every rank: for results that not every rank has."""
        if not self.many:
            return value
        values = [v for v in self.all_gather_objects(value) if v is not None]
        if not values:
            return None
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    # -- collectives (each a no-op for one rank) --------------------------------------------
    def all_reduce_(self, tensors: Sequence[Tensor], op: str = "sum") -> None:
        """Reduce ``tensors`` in place over all ranks ("sum", "max" or "min"), bucketed."""
        if not self.many:
            return
        reduce_op = {"sum": _dist().ReduceOp.SUM, "max": _dist().ReduceOp.MAX, "min": _dist().ReduceOp.MIN}[op]
        for bucket in _buckets(tensors):
            flat = self._on_wire(_flatten(bucket))
            with self._talking(f"an all-reduce ({op})"):
                _dist().all_reduce(flat, op=reduce_op)
            _unflatten_into(flat, bucket)

    def broadcast_(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` with rank ``src``'s, bucketed."""
        if not self.many:
            return
        for bucket in _buckets(tensors):
            flat = self._on_wire(_flatten(bucket))
            with self._talking("a broadcast"):
                _dist().broadcast(flat, src=src)
            _unflatten_into(flat, bucket)

    def all_gather_objects(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.many:
            return [obj]
        out: List[Any] = [None] * self.world_size
        with self._talking("an all-gather"):
            _dist().all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (picklable) on every rank."""
        if not self.many:
            return obj
        box = [obj if self.rank == src else None]
        with self._talking("a broadcast"):
            _dist().broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.many:
            self.all_gather_objects(None)  # a barrier that honours the timeout on every backend

    # -- errors that every rank hears about -------------------------------------------------
    def settle(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every rank (each on its share); this rank's result.

        If it fails on some rank, that rank raises its own error and every other rank
        :class:`PeerFailed` (once all have finished ``work``): nobody is left waiting.
        """
        error, result = None, None
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - reported to the peers, then raised as it was
            error = e
        if not self.many:
            if error is not None:
                raise error
            return result
        messages = self.all_gather_objects(_describe(error))
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            raise PeerFailed(f"rank {failed[0][0]} failed: {failed[0][1]}")
        return result

    def on_main(self, work: Callable[[], T], *, share: bool = False) -> Optional[T]:
        """Run ``work`` on rank 0 only while the others wait for it; its result on rank 0
        (on every rank with ``share``, then it must pickle), None elsewhere.

        An error on rank 0 is raised there as it was, and as :class:`PeerFailed` elsewhere.
        """
        if not self.many:
            return work()
        error, result = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - reported to the peers, then raised as it was
                error = e
        message, shared = self.broadcast_object(
            (_describe(error), None) if error is not None else (None, result if share else None))
        if error is not None:
            raise error
        if message is not None:
            raise PeerFailed(f"rank 0 failed: {message}")
        return result if self.is_main else shared

    def _on_wire(self, flat: Tensor) -> Tensor:
        """``flat`` where the backend can send it: NCCL moves only CUDA tensors (small CPU
        tensors, such as counts, go to this rank's GPU and back)."""
        if self.backend == "nccl" and flat.device.type != "cuda":
            return flat.to(self.device)
        return flat

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turn a transport failure of a collective into a one-line :class:`LostContact`."""
        try:
            yield
        except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo's and NCCL's own errors
            raise LostContact(
                f"rank {self.rank}: lost contact with the other ranks during {what} "
                f"({_first_line(e)}); another rank died or stopped answering within "
                f"{self.timeout.total_seconds():.0f} s; see its output, then continue with --resume"
            ) from None


SINGLE = Ranks()
"""One process, no process group: what a plain ``featgs train`` runs as."""


def launched(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process was started by ``torchrun`` (or anything that sets RANK and WORLD_SIZE)."""
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


@contextlib.contextmanager
def process_group(device: torch.device, *, timeout: timedelta = TIMEOUT,
                  env: Optional[Mapping[str, str]] = None) -> Iterator[Ranks]:
    """The ranks of this launch: a process group while inside, destroyed on the way out.

    Not launched by torchrun: :data:`SINGLE` (on ``device``) and no process group. Launched:
    NCCL when ``device`` is CUDA (this rank pinned to ``cuda:LOCAL_RANK``), else gloo; the
    rendezvous comes from the environment (MASTER_ADDR, MASTER_PORT, or torchrun's own
    store), and every collective waits at most ``timeout`` for the others. ``env`` (default
    ``os.environ``) is where RANK, WORLD_SIZE and LOCAL_RANK are read.

    Raises:
        FeatgsError: a malformed launch environment, a rank whose GPU does not exist, or
            ranks that could not meet within ``timeout``.
    """
    env = os.environ if env is None else env
    if not launched(env):
        yield Ranks(device=device, timeout=timeout)
        return
    rank, world, local = _launch_numbers(env)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise FeatgsError(f"rank {rank}: LOCAL_RANK {local} but this machine has {count} CUDA GPU(s); "
                              f"expected --nproc_per_node at most {count}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
        # A collective that times out raises in the thread that waits for it (LostContact, one
        # line) instead of NCCL's watchdog aborting the process: torch reads this at init.
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    else:
        backend = "gloo"
    ranks = Ranks(rank=rank, world_size=world, local_rank=local, backend=backend, device=device, timeout=timeout)
    dist = _dist()
    try:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world, **kwargs)
    except (RuntimeError, ValueError) as e:  # a rendezvous that timed out, an address in use
        raise FeatgsError(f"rank {rank}: could not join the other {world - 1} rank(s) ({_first_line(e)}); "
                          "expected every rank started with the same MASTER_ADDR:MASTER_PORT "
                          f"within {timeout.total_seconds():.0f} s") from None
    try:
        yield ranks
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _launch_numbers(env: Mapping[str, str]) -> tuple[int, int, int]:
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise FeatgsError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
                          f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: expected integers as torchrun sets them") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise FeatgsError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world, local


def _dist():
    import torch.distributed as dist

    return dist


def _buckets(tensors: Sequence[Tensor]) -> Iterator[List[Tensor]]:
    """Groups of same dtype and device, each at most BUCKET_BYTES (a bigger tensor alone)."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        bucket, size = [], 0
        for t in group:
            nbytes = t.numel() * t.element_size()
            if bucket and size + nbytes > BUCKET_BYTES:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += nbytes
        if bucket:
            yield bucket


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1).clone()


def _unflatten_into(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def _first_line(error: BaseException) -> str:
    """The gist of ``error`` on one line: its first sentence, without a source location
    such as gloo's "[.../pair.cc:545] " prefix."""
    text = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text[0]) if text else ""
    line = line.split(". ")[0].rstrip(".") or error.__class__.__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _describe(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    return _first_line(error) if isinstance(error, FeatgsError) else f"{error.__class__.__name__}: {_first_line(error)}"


__all__ = ["LostContact", "PeerFailed", "Ranks", "SINGLE", "TIMEOUT", "launched", "process_group"]
