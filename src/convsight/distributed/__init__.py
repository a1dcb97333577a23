"""Where a study's repeated work runs: in this process (:class:`LocalWork`) or as tasks on a
Ray cluster (:func:`connect`, the optional extra ``convsight[ray]``), with the same results.

A study hands :meth:`Work.map` a function, the inputs every call shares (the model, the
pixels: sent to a cluster once) and one item per call; results come back as they finish and
the caller alone writes files, so a lost worker loses nothing recorded. Ray is imported only
by :func:`connect`.
"""

from convsight.distributed.work import LocalWork, Work, shards


def connect(address: str, cpus_per_task: int = 1) -> "Work":
    """Work on the Ray cluster at ``address``: ``local``, ``auto`` or ``HOST:PORT`` (see
    :func:`convsight.distributed.ray_work.connect`)."""
    from convsight.distributed.ray_work import connect as ray_connect

    return ray_connect(address, cpus_per_task)


def check_ray(address: str) -> None:
    """Ray is installed and ``address`` answers (cheap; before any work): else one sentence."""
    from convsight.distributed.ray_work import check_address

    check_address(address)


__all__ = ["LocalWork", "Work", "check_ray", "connect", "shards"]
