"""Sweeps, reports and per-layer precompute on a Ray cluster (https://docs.ray.io), with the rows
one process would give, bit for bit (docs/cluster.md).

Work units, each a pure function of the zoo and the unit (the α search scores the whole grid,
``analysis.alpha.grid_alpha``, so a point never depends on the points before it):
- ``PointUnit``: one (method, parameters, α rule) point: the merge, α on validation and the
  accuracies on every task;
- ``LayerUnit``: one matrix key: its spectra and each method's merged-update decomposition.

Units go to long-lived Ray actors (``Worker``): one per GPU where the cluster has GPUs, else
one per ``cpus_per_worker`` CPUs. Each opens the zoo once and holds one ``Evaluator`` (so one
``Merger``): the units a worker runs share its decompositions, as they do in-process. A worker
computes into a ``MemoryStore`` and returns the rows; only the driver writes them into the
SQLite ``ResultStore``, in its usual short transactions. Units whose rows are stored already are
never submitted. A worker that dies (or whose node is lost) is dropped, its unit resubmitted to a
live one, and a replacement requested; since units are deterministic the rows do not change.

The driver needs no checkpoint: the workers open the zoo (the path must be the same on every
node) and describe it (``ZooInfo``). The driver then reads the tables back through an ordinary
``Evaluator`` over ``RemoteZoo`` and ``RemoteLayout``, whose every computation raises
``NotStored``: the tables come out of exactly the in-process code.

Ray is imported only here, and only when a cluster is used.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from analysis.evaluation import Evaluator
from analysis.store import MemoryStore, ResultStore, Rows
from merging import settings
from merging.errors import IsoscopeError
from merging.progress import Progress, silent
from merging.registry import get_method
from merging.tensors import StateDict
from zoo.base import SPLITS, Zoo

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[1]
# Left out of the shipped working_dir: the environment, caches, outputs and the repository.
SHIP_EXCLUDES = [".venv", ".git", ".pytest_cache", "**/__pycache__", "reports", "docs", "tests", "*.sqlite"]
CONNECT_TIMEOUT_S = 5.0  # TCP check of a host:port address before Ray is asked (it retries for minutes)
REPLACEMENT_WAIT_S = 300.0  # how long a run with no live worker waits for a replacement
NAMESPACE = "isoscope"
MB = 2 ** 20


class NotStored(IsoscopeError):
    """A driver-side read found a result missing from the store (it computes nothing)."""


@dataclass(frozen=True)
class ZooSpec:
    """How to open a zoo: what the CLI's zoo options name, sent to every worker."""

    zoo: str = "digits"
    data: str | None = None
    pretrained: str | None = None
    trust_pickle: bool = False
    device: str | None = None
    threads: int = 2  # torch threads; equal on driver and workers, so float reductions match
    max_images: int | None = None  # quick mode: a stratified sample of at most this many images per split

    def open(self, progress: Progress | None = None) -> Zoo:
        """The zoo, with torch's thread count set first."""
        from zoo import load_zoo

        torch.set_num_threads(self.threads)
        options = {"pretrained": self.pretrained} if self.pretrained else {}
        options |= {"max_images": self.max_images} if self.max_images else {}
        return load_zoo(self.zoo, data=self.data, trust_pickle=self.trust_pickle, device=self.device,
                        progress=progress, **options)


@dataclass(frozen=True)
class ZooInfo:
    """What the driver knows of a zoo opened by the workers."""

    name: str
    fingerprint: str
    tasks: tuple[str, ...]
    has_data: bool
    matrix_keys: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    node: str = ""  # the describing worker's node: its IP address and Ray's node id
    node_id: str = ""

    @classmethod
    def of(cls, ev: Evaluator, node: str = "", node_id: str = "") -> ZooInfo:
        return cls(ev.zoo.name, ev.fingerprint, tuple(ev.tasks), bool(ev.zoo.has_data),
                   tuple(ev.merger.matrix_keys), {k: tuple(v) for k, v in ev.merger.shapes.items()}, node, node_id)


def _not_stored(what: str) -> NotStored:
    return NotStored(f"{what} is not in the result store (the cluster run did not produce it)")


class RemoteZoo(Zoo):
    """A zoo the driver knows by its description only: evaluating raises ``NotStored``."""

    def __init__(self, info: ZooInfo) -> None:
        self.info = info
        self.name = info.name
        self.tasks = list(info.tasks)

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def has_data(self) -> bool:
        return self.info.has_data

    def pretrained(self) -> StateDict:
        raise _not_stored("θ0")

    def finetuned(self, task: str) -> StateDict:
        raise _not_stored(f"θ of {task}")

    def evaluate(self, state_dict: StateDict, task: str, split: str = "test") -> float:
        raise _not_stored(f"an accuracy on {task} ({split})")


class RemoteLayout:
    """The keys and shapes of a Merger that lives on the workers: merging raises ``NotStored``."""

    def __init__(self, info: ZooInfo) -> None:
        self.matrix_keys = list(info.matrix_keys)
        self.shapes = dict(info.shapes)
        self.keys = list(info.shapes)
        self.num_tasks = len(info.tasks)

    def __getattr__(self, name: str) -> Any:  # layer, shared, layer_offset, update, merged, ...
        def compute(*args: Any, **kwargs: Any) -> Any:
            raise _not_stored(f"a merge ({name} {args[:2]})")
        return compute


def stored_evaluator(info: ZooInfo, store: ResultStore) -> Evaluator:
    """An Evaluator reading ``store`` only: tables of the zoo ``info`` from stored rows."""
    return Evaluator(RemoteZoo(info), merger=RemoteLayout(info), store=store)  # type: ignore[arg-type]


# -- work units -----------------------------------------------------------------------------------

Items = tuple[tuple[str, Any], ...]


def items(params: Mapping[str, Any] | None) -> Items:
    return tuple(sorted((params or {}).items()))


@dataclass(frozen=True)
class PointUnit:
    """One sweep or report point: ``ev.table`` of (method, params, α rule) on ``splits``."""

    method: str
    params: Items
    alpha: float | None = None
    splits: tuple[str, ...] = SPLITS

    def run(self, ev: Evaluator) -> None:
        ev.table(self.method, dict(self.params), self.alpha, self.splits)

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in self.params)
        return f"{get_method(self.method).display_name} {shown}".strip()


@dataclass(frozen=True)
class LayerUnit:
    """One matrix key: its spectra and the decomposition of every method's update on it."""

    key: str
    methods: tuple[tuple[str, Items], ...]
    alpha: float | None = None

    def run(self, ev: Evaluator) -> None:
        dec = ev.decompositions
        dec.spectra(self.key)
        for method, params in self.methods:
            dec.merged_layer(self.key, method, dict(params), self.alpha)

    @property
    def label(self) -> str:
        return f"layer {self.key}"


Unit = PointUnit | LayerUnit


def sweep_units(method: str, param: str, values: Sequence[float], params: Mapping[str, Any] | None = None,
                alpha: float | None = None, splits: Sequence[str] = SPLITS) -> list[PointUnit]:
    """One unit per value of a ``param_sweep``."""
    from analysis.sweeps import point_params

    return [PointUnit(method, items(point_params(params, param, v)), alpha, tuple(splits)) for v in values]


def layer_units(keys: Iterable[str], methods: Iterable[str], params: Mapping[str, Mapping[str, Any]] | None = None,
                alpha: float | None = None) -> list[LayerUnit]:
    """One unit per key, each with every method (its defaults, or ``params[method]``)."""
    chosen = tuple((m, items(get_method(m).resolve((params or {}).get(m)))) for m in methods)
    return [LayerUnit(k, chosen, alpha) for k in keys]


def missing(units: Iterable[Unit], stored: Evaluator) -> list[Unit]:
    """The units whose rows are not all in ``stored``'s store (a ``stored_evaluator``, or any
    Evaluator over a zoo that cannot compute)."""
    out = []
    for unit in units:
        try:
            unit.run(stored)
        except NotStored:
            out.append(unit)
    return out


def run_local(units: Sequence[Unit], ev: Evaluator, progress: Progress | None = None) -> None:
    """The in-process path: every unit on ``ev`` (its store is written as it goes)."""
    report = progress or silent
    for i, unit in enumerate(units):
        report(i / max(len(units), 1), unit.label)
        unit.run(ev)
    report(1.0, f"{len(units)} units")


# -- the workers ----------------------------------------------------------------------------------

class Worker:
    """One long-lived evaluator on a node (a Ray actor): opens the zoo once, runs units, returns rows."""

    def __init__(self, spec: ZooSpec) -> None:
        import ray

        self.node = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.error: str | None = None
        try:
            self.store = MemoryStore()
            self.ev = Evaluator(spec.open(), store=self.store, device=spec.device)  # type: ignore[arg-type]
            self.info = ZooInfo.of(self.ev, self.node, self.node_id)
        except (IsoscopeError, OSError, ValueError, RuntimeError) as err:
            self.error = f"cannot open zoo {spec.zoo!r} on node {self.node}: {err} (the zoo path must be the same on every node)"

    def describe(self) -> ZooInfo | str:
        return self.error if self.error is not None else self.info

    def run(self, unit: Unit) -> Rows:
        start = time.perf_counter()
        unit.run(self.ev)
        rows = self.store.drain()
        rows.seconds = time.perf_counter() - start
        return rows


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:  # pragma: no cover - ray is in requirements.txt
        raise IsoscopeError(f"--ray needs the ray package ({err}); pip install -r requirements.txt") from None
    return ray


def _check_reachable(address: str) -> None:
    """One readable line, fast, for a host:port nobody listens on (Ray itself retries for minutes)."""
    if address in ("auto", "local", ""):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise IsoscopeError(f"Ray address {address!r}: write auto, host:port or ray://host:10001")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise IsoscopeError(f"cannot reach a Ray cluster at {address}: {err.strerror or err} (start one with "
                            "`ray start --head`, or check the address and the firewall)") from None


def runtime_env() -> dict[str, Any]:
    """How workers import Isoscope: the project shipped as Ray's working_dir (default), or
    nothing when it is installed on every node (``ISOSCOPE_RAY_SHIP=installed``)."""
    if settings.value("ray_ship") == "installed":
        return {}
    return {"working_dir": str(PROJECT), "excludes": SHIP_EXCLUDES}


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (Ray's forms: auto, host:port, ray://host:10001); True when
    this call started the connection (and so should end it)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address, runtime_env=runtime_env(), namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IsoscopeError(f"cannot join the Ray cluster at {address}: {first}") from None
    return True


@dataclass
class Resources:
    """The cluster as the sidebar shows it."""

    address: str
    nodes: int
    cpus: float
    gpus: float

    def __str__(self) -> str:
        return f"{self.nodes} node{'s' * (self.nodes != 1)}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"


def resources(address: str) -> Resources:
    """Nodes alive, CPUs and GPUs of the cluster at ``address`` (joined first if needed)."""
    ray = _ray()
    connect(address)
    alive = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    return Resources(address, len(alive), float(total.get("CPU", 0)), float(total.get("GPU", 0)))


@dataclass
class _Slot:
    actor: Any
    busy: Any = None  # the unit in flight, if any
    node: str = ""
    node_id: str = ""


@dataclass
class Cluster:
    """A pool of ``Worker`` actors over one zoo on one Ray cluster (see module docstring)."""

    address: str
    spec: ZooSpec
    workers: int | None = None  # at most this many (default: as many as the resources allow)
    cpus_per_worker: float = 1.0
    info: ZooInfo | None = None
    _slots: list[_Slot] = field(default_factory=list)
    _pending: dict[Any, Any] = field(default_factory=dict)  # describe() ref -> actor not yet ready
    timings: list[tuple[str, float, float]] = field(default_factory=list)  # unit, submit→rows s, compute s
    resubmitted: int = 0  # units whose worker died under them
    _owns_connection: bool = False

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Cluster:
        ray = _ray()
        self._owns_connection = connect(self.address)
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            capacity = gpus if gpus else int(ray.cluster_resources().get("CPU", 0) // self.cpus_per_worker)
            count = max(1, min(capacity or 1, self.workers or capacity or 1))
            log.info("starting %d worker(s) (%s each) on %s", count, "1 GPU" if gpus else f"{self.cpus_per_worker:g} CPU",
                     self.address)
            for _ in range(count):
                self._spawn()
            deadline = time.monotonic() + REPLACEMENT_WAIT_S
            while self._pending and not self._slots or (self._pending and time.monotonic() < deadline
                                                        and len(self._slots) < count):
                self._admit(timeout=max(0.0, deadline - time.monotonic()))
            if not self._slots:
                raise IsoscopeError(f"no worker could start on the Ray cluster at {self.address} "
                                    "(not enough free CPUs or GPUs)")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every worker (and the connection when this Cluster made it); idempotent."""
        ray = _ray()
        if ray.is_initialized():
            for actor in [s.actor for s in self._slots] + list(self._pending.values()):
                try:
                    ray.kill(actor)
                except Exception as err:  # noqa: BLE001 - an actor already gone
                    log.debug("kill: %s", err)
        self._slots.clear()
        self._pending.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
            self._owns_connection = False

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> None:
        ray = _ray()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        resources = {"num_gpus": 1} if gpus else {"num_cpus": self.cpus_per_worker}
        actor = ray.remote(Worker).options(scheduling_strategy="SPREAD", max_restarts=0, **resources).remote(self.spec)
        self._pending[actor.describe.remote()] = actor

    def _admit(self, timeout: float | None) -> bool:
        """Wait for one pending worker to be ready and add it to the pool (True if one was)."""
        ray = _ray()
        done, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        for ref in done:
            actor = self._pending.pop(ref)
            try:
                found = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                log.warning("a worker died while starting: %s", str(err).splitlines()[0])
                continue
            self._accept(actor, found)
        return bool(done)

    def _accept(self, actor: Any, found: ZooInfo | str) -> None:
        if isinstance(found, str):
            raise IsoscopeError(found)
        if self.info is not None and found.fingerprint != self.info.fingerprint:
            raise IsoscopeError(f"node {found.node} sees a different zoo at {self.spec.zoo!r} (fingerprint "
                                f"{found.fingerprint}, not {self.info.fingerprint}): the zoo path must hold the "
                                "same files on every node")
        self.info = self.info or found
        self._slots.append(_Slot(actor, node=found.node, node_id=found.node_id))

    # resources ---------------------------------------------------------------------------------
    def resources(self) -> Resources:
        return resources(self.address)

    @property
    def workers_alive(self) -> int:
        return len(self._slots)

    def idle_nodes(self) -> list[str]:
        """Ray node ids of the workers not running a unit now (the next units go to them)."""
        return [s.node_id for s in self._slots if s.busy is None]

    # running units -----------------------------------------------------------------------------
    def stored(self, store: ResultStore) -> Evaluator:
        """The driver's read-only Evaluator over ``store`` for this cluster's zoo."""
        assert self.info is not None, "start() first"
        return stored_evaluator(self.info, store)

    def run(self, units: Sequence[Unit], store: ResultStore, progress: Progress | None = None) -> int:
        """Run the units not stored yet, writing each one's rows as it completes; return how many ran."""
        ray = _ray()
        report = progress or silent
        todo = deque(missing(units, self.stored(store)))
        total, done, flight = len(todo), 0, {}
        log.info("%d of %d unit(s) to run on %d worker(s)", total, len(units), len(self._slots))
        report(0.0, f"{total} units on {len(self._slots)} workers")
        while todo or flight:
            self._dispatch(todo, flight)
            if not flight:
                self._await_replacement(len(todo))
                continue
            ref = ray.wait(list(flight) + list(self._pending), num_returns=1)[0][0]
            if ref in self._pending:
                self._admit(timeout=0)
                continue
            slot, submitted = flight.pop(ref)
            unit, slot.busy = slot.busy, None
            rows = self._collect(ref, slot, unit, todo)
            if rows is None:
                continue
            store.write(rows)
            self.timings.append((unit.label, time.perf_counter() - submitted, rows.seconds))
            done += 1
            report(done / total, f"{unit.label} ({slot.node})")
        return total

    def _dispatch(self, todo: deque, flight: dict) -> None:
        """One unit to every idle worker: flight[ref] = (slot, submission time)."""
        for slot in self._slots:
            if slot.busy is None and todo:
                slot.busy = todo.popleft()
                flight[slot.actor.run.remote(slot.busy)] = (slot, time.perf_counter())

    def _await_replacement(self, left: int) -> None:
        """Units left and no live worker: wait for a requested replacement, or give up with one line."""
        if not self._pending or not self._admit(timeout=REPLACEMENT_WAIT_S) or not self._slots and not self._pending:
            raise IsoscopeError(f"no live worker left on the Ray cluster at {self.address} ({left} unit(s) not run; "
                                "rerun to resume)")

    def _collect(self, ref: Any, slot: _Slot, unit: Unit, todo: deque) -> Rows | None:
        """A finished unit's rows; None when its worker died (the unit is queued again, a
        replacement requested); a unit's own IsoscopeError becomes one line naming the node."""
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            log.warning("the worker on node %s died (%s): %s goes to another worker, and a replacement is requested",
                        slot.node, type(err).__name__, unit.label)
            self._slots.remove(slot)
            todo.appendleft(unit)
            self.resubmitted += 1
            self._spawn()
            return None
        except ray.exceptions.RayTaskError as err:
            cause = err.as_instanceof_cause()
            if isinstance(cause, IsoscopeError):
                raise IsoscopeError(f"on node {slot.node}: {str(cause).splitlines()[-1]}") from None
            raise


# -- driver-side commands -------------------------------------------------------------------------

def sweep(cluster: Cluster, store: ResultStore, method: str, param: str, values: Sequence[float],
          params: Mapping[str, Any] | None = None, alpha: float | None = None, progress: Progress | None = None,
          splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """``analysis.sweeps.param_sweep`` with its points run on the cluster."""
    from analysis.sweeps import param_sweep

    cluster.run(sweep_units(method, param, values, params, alpha, splits), store, progress)
    return param_sweep(cluster.stored(store), method, param, values, params, alpha, splits=splits)


def report_units(keys: Sequence[str], methods: Sequence[str]) -> list[Unit]:
    """What ``analysis.report.build_report`` reads: each method's point at its defaults, and the
    spectra and decompositions of every layer of ``keys``."""
    points: list[Unit] = [PointUnit(m, items(get_method(m).resolve(None))) for m in methods]
    return points + list(layer_units(keys, methods))


@contextmanager
def local_cluster(nodes: int = 2, object_store_mb: int = 80) -> Iterator[Any]:
    """A real multi-node Ray cluster on this machine, for tests and benchmarks: a head without
    CPUs (so every unit runs on a worker node) and ``nodes`` raylets of one CPU each, small object
    stores, no dashboard; shut down on exit. Yields ``ray.cluster_utils.Cluster``."""
    from ray.cluster_utils import Cluster as RayCluster

    cluster = RayCluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": (object_store_mb + 20) * MB, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, object_store_memory=object_store_mb * MB)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray = _ray()
        ray.shutdown()
        cluster.shutdown()
