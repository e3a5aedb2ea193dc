"""Run a probe over many machines: the batches of a dataset run shared among Ray workers.

    run = probe.run("reviews.csv", out="runs/reviews", engine="ray", workers=4)            # a local Ray
    run = probe.run("reviews.csv", out="runs/reviews", engine="ray", address="auto")       # the running cluster
    attn-probe run --model M --data D --out DIR --engine ray --address ray://head:10001 --workers 8

How it works. The process that calls ``Probe.run`` (the driver) plans the run as the local engine does (same
identity, same batches, same sample of kept matrices) and opens the run directory. Each worker is a Ray actor
that loads the model once: with :meth:`Probe.load`'s name or path when the probe was loaded that way (every
node must be able to load it: a hub id, or a path on shared storage), else a copy of the in-memory model sent
through Ray's object store. The driver hands out one batch at a time to idle workers; each worker returns the
batch's tables and sampled matrices (:meth:`Probe.explain_shard`), and the driver writes them as one committed
chunk, as the local engine would. So only the driver needs the run directory, the tables are the same rows as a
local run's (read back sorted by example id), and a resume (after ``kill -9`` of the driver, or of the whole
cluster) skips the chunks already written, whichever engine wrote them.

Failures. A worker that dies (its process killed, its node lost) has its batch retried on a fresh worker, up to
``retries`` times per batch, with a warning each time. An error inside a batch (bad input, NaN in the model)
is not retried: it stops the run with the same message the local engine gives, and the chunks written so far
are kept. Every worker checks that it loaded the same model (weights fingerprint) as the driver.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

RAY_HINT = "pip install 'attn_probe[ray]' (or pip install ray)"


class MissingRayError(ImportError, ValueError):
    """The Ray engine was asked for, but Ray is not installed (a ValueError too: bad input, exit 2)."""


class WorkerLostError(RuntimeError, ValueError):
    """A batch lost its worker more times than allowed."""


def check_ray() -> None:
    """Raise :class:`MissingRayError` with how to install it when Ray is not importable."""
    if importlib.util.find_spec("ray") is None:
        raise MissingRayError(f"the ray engine needs Ray, which is not installed: {RAY_HINT}")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` of a cluster (None: the running Ray in this process, else a new local
    one), ``workers`` (None: one per CPU Ray offers), ``gpus_per_worker``, ``cpus_per_worker``, and
    ``retries`` per batch when a worker dies."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    retries: int = 3

    @classmethod
    def of(cls, *, address: str | None, workers: int | None, gpus_per_worker: float) -> RayOptions:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if not gpus_per_worker >= 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
        return cls(address=address, workers=workers, gpus_per_worker=float(gpus_per_worker))


class ShardWorker:
    """One Ray actor: a probe loaded once, explaining the batches it is given."""

    def __init__(self, source: dict[str, Any] | None, shipped: Any, name: str, threads: int, gpus: float) -> None:
        import torch

        from attn_probe.probe import Probe

        torch.set_num_threads(max(1, threads))  # its share of the node's cores, not all of them per worker
        device = "cuda" if gpus > 0 else "cpu"
        if source is not None:
            self.probe = Probe.load(source["name_or_path"], task=source["task"], dtype=source["dtype"], device=device)
        else:
            model, tokenizer = shipped
            self.probe = Probe(model.to(device), tokenizer, name=name)

    def fingerprint(self) -> str:
        from attn_probe.store import model_fingerprint

        return model_fingerprint(self.probe.model)

    def pid(self) -> int:
        return os.getpid()

    def explain(self, part: pd.DataFrame, plan: Any) -> Any:
        return self.probe.explain_shard(part, plan)


def run_shards_on_ray(
    probe: Any,
    shards: Sequence[pd.DataFrame],
    plan: Any,
    options: RayOptions,
    fingerprint: str,
    progress: bool = True,
) -> Iterator[Any]:
    """Yield each shard's :class:`~attn_probe.probe.ShardResult` as the workers finish them (in any order)."""
    check_ray()
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    pool = _WorkerPool(ray, probe, options, fingerprint)
    bar = _bar(len(shards), probe.name, progress)
    try:
        if shards:
            pool.start(min(pool.size, len(shards)))
        queue = deque((index, 0) for index in range(len(shards)))  # (shard, times its worker was lost)
        running: dict[Any, tuple[Any, int, int]] = {}  # task -> (worker, shard, losses)
        while queue or running:
            while queue and pool.idle:
                index, losses = queue.popleft()
                worker = pool.idle.pop()
                running[worker.explain.remote(shards[index], plan)] = (worker, index, losses)
            (task,), _ = ray.wait(list(running), num_returns=1)
            worker, index, losses = running.pop(task)
            try:
                result = ray.get(task)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                pool.replace(worker)
                losses += 1
                ids = [int(i) for i in shards[index]["example_id"]]
                if losses > options.retries:
                    raise WorkerLostError(
                        f"examples {ids[:5]}{'...' if len(ids) > 5 else ''} lost their Ray worker {losses} times "
                        f"(last: {type(error).__name__}); the batches written so far are kept: check the cluster's "
                        "nodes (memory, preemption), then run the same command again to resume"
                    ) from None
                warnings.warn(
                    f"a Ray worker died while explaining examples {ids[:5]}{'...' if len(ids) > 5 else ''} "
                    f"({type(error).__name__}); the batch is retried on a new worker (attempt {losses + 1} of "
                    f"{options.retries + 1})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                queue.appendleft((index, losses))
                continue
            except ray.exceptions.RayTaskError as error:
                raise _original(error) from None  # bad input, NaN in the model, ...: as the local engine says it
            pool.idle.append(worker)
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if bar is not None:
            bar.close()
        pool.stop()
        if started_here:
            ray.shutdown()


class _WorkerPool:
    """The actors: started, replaced when one dies, the idle ones ready for a batch."""

    def __init__(self, ray: Any, probe: Any, options: RayOptions, fingerprint: str) -> None:
        self.ray = ray
        self.options = options
        self.fingerprint = fingerprint
        self.idle: list[Any] = []
        self.all: list[Any] = []
        cpus = int(ray.available_resources().get("CPU", 1))
        self.size = options.workers or max(1, int(cpus // options.cpus_per_worker))
        # a probe loaded by name is loaded again by each worker; an in-memory one travels once through the store
        self.source = probe.source
        self.shipped = None if probe.source is not None else ray.put((probe.model.cpu(), probe.tokenizer))
        self.name = probe.name
        self.actor = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker, max_restarts=0)(
            ShardWorker
        )

    def start(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(self._new())

    def replace(self, dead: Any) -> None:
        self.ray.kill(dead, no_restart=True)
        self.all.remove(dead)
        self.idle.append(self._new())

    def stop(self) -> None:
        for actor in self.all:
            self.ray.kill(actor, no_restart=True)
        self.all.clear()
        self.idle.clear()

    def _new(self) -> Any:
        threads = max(1, int(self.options.cpus_per_worker))
        actor = self.actor.remote(self.source, self.shipped, self.name, threads, self.options.gpus_per_worker)
        loaded = self.ray.get(actor.fingerprint.remote())
        if loaded != self.fingerprint:
            self.ray.kill(actor, no_restart=True)
            raise ValueError(
                f"a Ray worker loaded a different {self.name!r} than this process (weights fingerprint {loaded[:12]} "
                f"vs {self.fingerprint[:12]}): every node must load the same model (same path contents, same "
                "revision); the run directory is unchanged"
            )
        self.all.append(actor)
        return actor


def _original(error: Any) -> BaseException:
    """The exception a task raised, as it was raised (Ray wraps it; ``as_instanceof_cause`` keeps the type)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _bar(total: int, name: str, shown: bool) -> Any:
    if not shown:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"attn-probe {name} (ray)", unit="batch")
