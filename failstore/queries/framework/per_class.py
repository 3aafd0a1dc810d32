"""Running one pure function per class, here or as Ray tasks (``--engine ray``).

The analyses that work class by class (slices, Barlow trees) hand each class's work to
``map_classes``: with ``engine="local"`` the calls run in this process, one after another; with
``engine="ray"`` each is a Ray task (``failstore.cluster``), and the results come back in the
order of the jobs, so the rows written are the same as the local engine's. Ray is imported only
for ``engine="ray"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from failstore.errors import ConfigError
from failstore.queries.framework.params import Param

ENGINES = ("local", "ray")


ENGINE_PARAMS = (
    Param(
        "engine", "local",
        "local: every class in this process; ray: one Ray task per class (docs/scaling.md).",
        choices=ENGINES,
    ),
    Param(
        "address", None, "--engine ray: the cluster (auto, ray://HEAD:10001); default: local.",
        optional=True,
    ),
)  # fmt: skip


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def map_classes(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    *,
    engine: str = "local",
    address: str | None = None,
    cpus: float = 1.0,
) -> list[Any]:
    """``[fn(*job) for job in jobs]``, on Ray tasks of ``cpus`` CPUs each when asked."""
    check_engine(engine)
    if engine == "local" or not jobs:
        return [fn(*job) for job in jobs]
    from failstore.cluster import start

    ray = start(address)
    task = ray.remote(num_cpus=cpus)(fn)
    return list(ray.get([task.remote(*job) for job in jobs]))
