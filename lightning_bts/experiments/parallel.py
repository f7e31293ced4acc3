"""Cross-validation runs as Ray tasks (``scripts/cv.py --address``): each (loss, fold[, seed]) run is one task
with its own CPUs/GPUs, retried by Ray, at most ``max_concurrent`` in flight.

A task is the sequential runner's own :func:`lightning_bts.experiments.cv.run_one`, passed in by the caller (this
module does not import :mod:`.cv`), so a run on Ray trains, evaluates and writes exactly what it writes in turn:
the same fresh seeded model, the same folds, the same files, ``folds/<run>.json`` last. It writes them from the
node that ran it, into ``--out``; that folder must therefore be one every node reaches at the same path (a shared
filesystem). When it is not, the run's files land on that node and the driver, not finding ``folds/<run>.json``
after the task returned, stops with a :class:`CVError` naming the path and the node.

Connecting, the accelerator check and the check of a run's resources against the cluster's nodes are the sweep's
(:mod:`lightning_bts.tune.cluster`); Ray does the scheduling and the retries (``max_retries``, also of a task
whose worker or node died). A run stopped by a :class:`~lightning_bts.errors.UserError` (bad input, which fails
the same way every time) is not retried.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_bts.errors import UserError
from lightning_bts.experiments.runs import CVError
from lightning_bts.tune.cluster import accelerator_for, check_resources, cluster_is_this_machine, connect
from lightning_bts.tune.settings import Resources
from lightning_bts.tune.space import TuneSetupError

_HOST_PORT = re.compile(r"^(ray://)?[^\s:/]+:\d+$")


@dataclass(frozen=True)
class RaySettings:
    """Where and how the runs go: ``address`` is ``auto`` (the cluster ``ray start`` runs here), ``local`` (a new
    Ray on this machine) or ``HOST:PORT`` / ``ray://HOST:PORT``; the rest is per run."""

    address: str
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_concurrent: int | None = None  # None: as many as the cluster has room for
    retries: int = 2  # Ray re-runs a failed run this many times before it counts as failed
    connect_timeout_s: float = 10.0

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.cpus_per_run, gpus=self.gpus_per_run)

    @property
    def threads(self) -> int:
        """Torch threads of a run: its CPUs (so that a run's numbers do not depend on the node's core count)."""
        return max(1, int(self.cpus_per_run))


def check_settings(settings: RaySettings, accelerator: Any) -> None:
    """Everything that can be checked without Ray; ``accelerator`` is the configuration's ``trainer.accelerator``.

    Raises:
        CVError: a bad address, resources, concurrency or retry count, or GPUs that the accelerator would not use.
    """
    if settings.address not in ("auto", "local") and not _HOST_PORT.match(settings.address):
        raise CVError(f"--address must be auto, local, HOST:PORT or ray://HOST:PORT, got {settings.address!r}")
    if settings.max_concurrent is not None and settings.max_concurrent < 1:
        raise CVError(f"--max-concurrent must be >= 1, got {settings.max_concurrent}")
    if isinstance(settings.retries, bool) or not isinstance(settings.retries, int) or settings.retries < 0:
        raise CVError(f"--retries must be an integer >= 0, got {settings.retries!r}")
    if math.isnan(settings.cpus_per_run) or math.isnan(settings.gpus_per_run):
        raise CVError("--cpus-per-run and --gpus-per-run must be numbers")
    with _as_cv_error():
        accelerator_for(settings.resources, accelerator if isinstance(accelerator, str) else None)


def prepare(settings: RaySettings, config: Any, out_dir: Path) -> tuple[Any, Path]:
    """Check ``settings`` against the experiment's ``config``; the config and ``out_dir`` with absolute paths
    (``--out``, ``data.root``, ``data.cache_dir``), since a worker's working directory is not the driver's."""
    check_settings(settings, config.get("accelerator") or config.trainer.get("accelerator"))
    config = config.clone()
    for key in ("root", "cache_dir"):
        if config.data.get(key):
            config.data[key] = str(Path(config.data[key]).expanduser().resolve())
    return config, Path(out_dir).expanduser().resolve()


def settings_from_args(args: Any) -> RaySettings | None:
    """The Ray settings of cv.py's command line; None (the runs one after another) without ``--address``."""
    given = {flag: value for flag, value in (("--cpus-per-run", args.cpus_per_run), ("--gpus-per-run",
             args.gpus_per_run), ("--max-concurrent", args.max_concurrent), ("--retries", args.retries))
             if value is not None}
    if args.address is None:
        if given:
            raise CVError(f"{', '.join(given)} only apply to runs on Ray; add --address auto|local|HOST:PORT")
        return None
    defaults = RaySettings(args.address)
    return RaySettings(args.address,
                       defaults.cpus_per_run if args.cpus_per_run is None else args.cpus_per_run,
                       defaults.gpus_per_run if args.gpus_per_run is None else args.gpus_per_run,
                       args.max_concurrent, defaults.retries if args.retries is None else args.retries)


def run_on_ray(settings: RaySettings, runs: Sequence[tuple[str, Path, Mapping[str, Any]]],
               run_one: Callable[..., dict[str, Any]],
               announce: Callable[[str, dict[str, Any]], None]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run each ``(name, result path, run_one keyword arguments)`` as a Ray task; returns the finished runs'
    records and, by name, why each failed run failed (after its retries). ``announce(name, record)`` is called
    as each run finishes.

    Raises:
        CVError: Ray cannot be joined, a run does not fit any node, or a finished run's results are not in
            ``--out`` as this process sees it (``--out`` is not shared with the node that ran it).
    """
    import ray

    with _as_cv_error():
        connect(None if settings.address == "local" else settings.address, None, settings.connect_timeout_s)
        check_resources(settings.resources)
    task = ray.remote(_task).options(num_cpus=settings.cpus_per_run, num_gpus=settings.gpus_per_run,
                                     max_retries=settings.retries, retry_exceptions=True)
    queue, in_flight = list(runs), {}
    limit = settings.max_concurrent or len(queue)
    finished, failed = [], {}
    while queue or in_flight:
        while queue and len(in_flight) < limit:
            name, path, kwargs = queue.pop(0)
            print(f"[cv] {name}: training (Ray task, {_describe(settings)})", flush=True)
            in_flight[task.remote(run_one, dict(kwargs), settings.threads)] = (name, path)
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        name, path = in_flight.pop(ref)
        try:
            record, node, user_error = ray.get(ref)
        except ray.exceptions.RayError as error:
            failed[name] = _reason(error)
            print(f"[cv] {name}: failed after {settings.retries + 1} attempt(s): {failed[name]}", flush=True)
            continue
        if user_error:
            failed[name] = user_error
            print(f"[cv] {name}: failed (not retried: the input or an option is wrong): {user_error}", flush=True)
            continue
        if not path.is_file():
            for other in in_flight:
                ray.cancel(other, force=True)
            where = "" if cluster_is_this_machine() else " (this Ray cluster spans several machines)"
            raise CVError(f"run {name} finished on node {node}, but its result {path} is not there as this driver "
                          f"sees it{where}: --out must be a folder every Ray node reaches at the same absolute path "
                          "(a shared filesystem); a node-local folder keeps each run's results on the node "
                          "that ran it")
        announce(name, record)
        finished.append(record)
    return finished, failed


def _task(run_one: Callable[..., dict[str, Any]], kwargs: dict[str, Any],
          threads: int) -> tuple[dict | None, str, str | None]:
    """One run in a Ray worker: torch on the run's CPUs, then ``run_one``; returns its record, the node and, for a
    :class:`UserError` (a missing file, a bad option: the same on every attempt), its message instead of raising
    it, so that Ray retries only what may pass another time (a crash, a lost worker or node)."""
    import socket

    import ray
    import torch

    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    torch.set_num_threads(threads)
    try:
        return run_one(**kwargs), node, None
    except UserError as error:
        return None, node, f"{type(error).__name__}: {error}"


def _describe(settings: RaySettings) -> str:
    gpus = f", {settings.gpus_per_run:g} GPU" if settings.gpus_per_run else ""
    return f"{settings.cpus_per_run:g} CPU{gpus}"


def _reason(error: Exception) -> str:
    """The failed run's own exception (a RayTaskError wraps it, traceback and all), in one line."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


@contextmanager
def _as_cv_error() -> Iterator[None]:
    """The sweep's checks name its flags (``--cpus-per-trial``); cv.py's are ``--cpus-per-run``."""
    try:
        yield
    except TuneSetupError as error:
        raise CVError(str(error).replace("-per-trial", "-per-run")) from error
