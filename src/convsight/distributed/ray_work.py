"""Work as Ray tasks (https://docs.ray.io): one task per item, retried elsewhere when its
worker or node is lost; the shared inputs go to the cluster's object store once."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from convsight.errors import ConvsightError

RETRIES = 3  # runs of a task after its worker or node died, beyond the first
REACH_SECONDS = 5.0  # how long to try a TCP connection to a cluster's address


def connect(address: str, cpus_per_task: int = 1) -> RayWork:
    """Work on a Ray cluster: ``local`` starts one on this machine, ``auto`` joins the one
    started here with ``ray start``, ``HOST:PORT`` joins that head node. A driver already
    connected (``ray.init`` called) keeps its cluster. Ray missing, or an address that does
    not answer, fails in one sentence before any work."""
    if cpus_per_task < 1:
        raise ConvsightError("a Ray task needs at least one CPU")
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        if address not in ("local", "auto"):
            _check_reachable(address)
        try:
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())[:160]
            where = (
                "on this machine (start one with `ray start --head`)"
                if address == "auto"
                else f"at {address}"
            )
            raise ConvsightError(f"cannot join a Ray cluster {where} ({reason})") from exc
        started_here = True
    work = RayWork(ray, address, cpus_per_task, started_here)
    if work.workers < 1:
        work.close()
        raise ConvsightError(f"the Ray cluster at {address} has no {cpus_per_task} CPUs for a task")
    return work


def check_address(address: str) -> None:
    """Ray can be imported and ``address`` is ``local``, ``auto`` or a ``HOST:PORT`` that
    accepts a TCP connection."""
    _import_ray()
    if address not in ("local", "auto"):
        _check_reachable(address)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConvsightError(
            "--ray needs Ray, which is not installed: pip install 'convsight[ray]'"
        ) from None
    return ray


def _check_reachable(address: str) -> None:
    """``HOST:PORT`` must accept a TCP connection (Ray would otherwise wait a long time)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConvsightError(f"--ray takes local, auto or HOST:PORT, not '{address}'")
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_SECONDS) as sock:
            speaks_grpc = _answers_http2(sock)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConvsightError(f"no Ray cluster answers at {address} ({reason})") from None
    if not speaks_grpc:
        raise ConvsightError(
            f"{address} answers, but not as a Ray head node does (gRPC); give the address "
            "`ray start --head` printed (its GCS port, 6379 by default)"
        )


# An HTTP/2 client's first bytes: the connection preface and an empty SETTINGS frame.
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _answers_http2(sock: socket.socket) -> bool:
    """Whether the server on ``sock`` answers an HTTP/2 greeting with a SETTINGS frame, as
    Ray's GCS (a gRPC server) does; a web server or anything else does not, and Ray would
    otherwise retry it for minutes, logging every try."""
    sock.sendall(_HTTP2_HELLO)
    header = b""
    while len(header) < 9:
        chunk = sock.recv(9 - len(header))
        if not chunk:
            return False
        header += chunk
    return header[3] == 4  # the frame type: SETTINGS


def _call(fn: Callable[..., Any], keys: list[str], threads: int, item: dict, *values: Any) -> Any:
    """One task: ``fn`` on the shared inputs (resolved by Ray) and its item."""
    torch.set_num_threads(threads)
    return fn(**dict(zip(keys, values, strict=True)), **item)


class RayWork:
    """Items as Ray tasks of ``cpus_per_task`` CPUs (torch runs that many threads in each)."""

    def __init__(self, ray: Any, address: str, cpus_per_task: int, started_here: bool) -> None:
        self._ray = ray
        self._task = ray.remote(_call)
        self._stored: dict[int, tuple[Any, Any]] = {}  # id -> (object, its reference)
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.started_here = started_here

    @property
    def workers(self) -> int:
        """Tasks the cluster can run at once now."""
        return int(self._ray.cluster_resources().get("CPU", 0)) // self.cpus_per_task

    def map(
        self, fn: Callable[..., Any], shared: dict[str, Any], items: Sequence[dict[str, Any]]
    ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        keys = list(shared)
        refs = [self._put(shared[k]) for k in keys]
        task = self._task.options(num_cpus=self.cpus_per_task, max_retries=RETRIES)
        pending = {
            task.remote(fn, keys, self.cpus_per_task, item, *refs): i
            for i, item in enumerate(items)
        }
        try:
            while pending:
                (done,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done)
                try:
                    result = ray.get(done)
                except ray.exceptions.RayTaskError as exc:  # raised by fn: raise it here
                    raise (exc.cause if exc.cause is not None else exc) from None
                yield index, result
        finally:
            for ref in pending:  # the caller stopped early: no work left running for it
                ray.cancel(ref)

    def _put(self, value: Any) -> Any:
        """``value`` in the object store, once per object."""
        if id(value) not in self._stored:
            try:
                self._stored[id(value)] = (value, self._ray.put(value))
            except Exception as exc:  # not picklable: say what
                raise ConvsightError(
                    f"cannot send the {type(value).__name__} to Ray workers ({exc})"
                ) from exc
        return self._stored[id(value)][1]

    def describe(self) -> dict[str, Any]:
        ray = self._ray
        return {
            "backend": "ray",
            "ray": ray.__version__,
            "address": self.address,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "workers": self.workers,
            "cpus_per_task": self.cpus_per_task,
            "retries": RETRIES,
        }

    def close(self) -> None:
        """Drop what was stored; leave the cluster if this process joined it."""
        self._stored.clear()
        if self.started_here:
            self._ray.shutdown()
