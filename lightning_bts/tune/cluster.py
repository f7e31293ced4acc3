"""The Ray cluster: connecting, the accelerator a trial runs on, and per-trial resources checked against the
cluster's nodes before any trial starts.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_bts.tune.settings import Resources
from lightning_bts.tune.space import TuneSetupError

# --------------------------------------------------------------------------------------------- Ray cluster


def connect(address: str | None = None, num_cpus: int | None = None, timeout_s: float = 10.0) -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), or start a local Ray.

    A TCP probe with a timeout comes first, because ``ray.init`` on an unreachable address retries for minutes.
    Does nothing when this process is already connected.
    """
    import ray

    if ray.is_initialized():
        return
    if num_cpus is not None and num_cpus <= 0:
        raise TuneSetupError(f"--num-cpus must be > 0, got {num_cpus}")
    if address:
        if address != "auto":
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not port.isdigit():
                raise TuneSetupError(f"Ray address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
            try:
                socket.create_connection((host, int(port)), timeout=timeout_s).close()
            except OSError as error:
                raise TuneSetupError(f"cannot reach the Ray cluster at {address} within {timeout_s:g} s: {error}. "
                                     "Is `ray start --head` running there, and the port open?") from error
        package = str(Path(__file__).resolve().parents[1])  # lightning_bts/, not lightning_bts/tune/
        try:  # ship this package's code to the workers; they need the same Python packages installed
            ray.init(address=address, runtime_env={"py_modules": [package]}, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else " If the cluster uses token authentication (recent "
                    "Ray versions enable it by default), set RAY_AUTH_MODE=token here, with the cluster's token in "
                    "RAY_AUTH_TOKEN or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it).")
            raise TuneSetupError(f"cannot join the Ray cluster at {address}: {error}.{hint}") from error
    else:
        # "local": a new Ray even where `ray start` left a cluster that ray.init() would otherwise join
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=256 * 1024**2)


def accelerator_for(resources: Resources, accelerator: str | None) -> str | None:
    """The accelerator trials use, checked against what they reserve (Ray hides unreserved GPUs from a trial)."""
    for name, amount in (("--cpus-per-trial", resources.cpus), ("--gpus-per-trial", resources.gpus),
                         ("--tpus-per-trial", resources.tpus)):
        if amount < 0 or math.isnan(amount):
            raise TuneSetupError(f"{name} must be >= 0, got {amount:g}")
    if resources.cpus <= 0:
        raise TuneSetupError(f"--cpus-per-trial must be > 0 (data loading and the training loop need a CPU), "
                             f"got {resources.cpus:g}")
    if resources.gpus > 1 and resources.gpus != int(resources.gpus):
        raise TuneSetupError(f"--gpus-per-trial above 1 must be a whole number, got {resources.gpus:g}")
    if resources.tpus != int(resources.tpus):
        raise TuneSetupError(f"--tpus-per-trial must be a whole number of chips, got {resources.tpus:g}")
    name = accelerator.lower() if accelerator else None
    if name in (None, "auto"):
        name = "gpu" if resources.gpus else "tpu" if resources.tpus else accelerator
    if name in ("gpu", "cuda") and not resources.gpus:
        raise TuneSetupError(f"--accelerator {name} needs --gpus-per-trial > 0: Ray hides GPUs from trials "
                             "that did not reserve one")
    if name == "tpu" and not resources.tpus:
        raise TuneSetupError("--accelerator tpu needs --tpus-per-trial > 0")
    if name == "cpu" and (resources.gpus or resources.tpus):
        raise TuneSetupError("--accelerator cpu would leave the reserved GPUs/TPUs idle; drop --gpus-per-trial/"
                             "--tpus-per-trial or pick --accelerator gpu/xla")
    _check_accelerator_known(name)
    return name


def check_workers(workers: Any, accelerator: str | None) -> None:
    """Multi-worker trials run Lightning's DDP through Ray Train: CPU or GPU workers, not XLA devices."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise TuneSetupError(f"--workers-per-trial must be an integer >= 1, got {workers!r}")
    if workers > 1 and accelerator in ("tpu", "xla"):
        raise TuneSetupError(f"--workers-per-trial {workers} runs DDP workers through Ray Train (CPU or GPU); "
                             f"for --accelerator {accelerator} use one worker per trial, which trains on all "
                             "of its devices with Lightning's XLA strategy")


def _check_accelerator_known(name: str | None) -> None:
    if name in (None, "auto", "gpu"):
        return
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if name == "xla":
        _register_xla()
    if name not in AcceleratorRegistry.available_accelerators():
        raise TuneSetupError(f"unknown --accelerator {name!r}; available: gpu, auto, "
                             f"{', '.join(sorted(AcceleratorRegistry.available_accelerators()))}")


def _register_xla() -> None:
    """Register the "xla" accelerator of lightning_bts.xla (torch_xla on any PJRT device) where that module exists."""
    try:
        from lightning_bts.xla.accelerator import register_xla_accelerator
    except ImportError:
        return
    register_xla_accelerator()


def trial_env(resources: Resources, accelerator: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    """Environment each trial sets before training: PJRT_DEVICE for XLA trials, plus ``extra``."""
    env = {}
    if accelerator in ("xla", "tpu"):
        default = "TPU" if resources.tpus else "CUDA" if resources.gpus else os.environ.get("PJRT_DEVICE", "CPU")
        env["PJRT_DEVICE"] = default
    env.update(extra)
    return env


def check_resources(resources: Resources, workers: int = 1) -> None:
    """Fail now if the cluster cannot hold one trial (a trial that can never be placed waits forever): some live
    node must hold one worker's bundle, and the cluster all ``workers`` of a trial."""
    check_workers(workers, None)
    bundle = resources.bundle()
    nodes = _live_node_resources()
    one = "one trial" if workers == 1 else "one worker of a trial"
    if not any(all(node.get(name, 0) >= amount for name, amount in bundle.items()) for node in nodes):
        largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in ("CPU", "GPU", "TPU")}
        short = [f"{amount:g} {name}" for name, amount in bundle.items() if amount > largest[name]]
        have = ", ".join(f"{amount:g} {name}" for name, amount in largest.items())
        detail = f" (no single node has {', '.join(short)})" if short else ""
        raise TuneSetupError(f"{one} asks for {_describe(bundle)} but the largest node of this Ray cluster has "
                             f"{have}{detail}; lower --cpus-per-trial/--gpus-per-trial/--tpus-per-trial "
                             "or add nodes")
    room = _worker_room(bundle, nodes)
    if room < workers:
        raise TuneSetupError(f"a trial of {workers} workers with {_describe(bundle)} each does not fit this Ray "
                             f"cluster (room for {room} such workers); lower --workers-per-trial or the "
                             "per-worker resources, or add nodes")


def _live_node_resources() -> list[dict[str, float]]:
    import ray

    return [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]


def _worker_room(bundle: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> int:
    """How many workers of ``bundle`` the ``nodes`` hold: whole workers per node, summed (a node with 3 CPUs
    holds one 2-CPU worker, not 1.5)."""
    return sum(min(int(node.get(name, 0) // amount) for name, amount in bundle.items()) for node in nodes)


def _describe(bundle: Mapping[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def _ray_is_connected() -> bool:
    import ray

    return ray.is_initialized()


def cluster_is_this_machine() -> bool:
    """True when every Ray node runs here, so a path missing here is missing for every trial."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(node["NodeManagerAddress"] == here for node in ray.nodes() if node.get("Alive"))
