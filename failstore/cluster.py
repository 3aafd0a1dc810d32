"""Connecting to Ray (``--engine ray``): one place for the ingest's Ray engine and the
analyses that run per class on Ray. ``ray`` is imported only here, and only when asked for."""

from __future__ import annotations

from typing import Any

from failstore.errors import ClusterError, ConfigError


def start(address: str | None) -> Any:
    """Connect to ``address`` (or start a local Ray) unless this process already is; quiet."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray, which is not installed",
            hint="pip install 'failstore[ray]' (or leave --engine out to ingest on this machine)",
        ) from None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as e:  # ConnectionError, ValueError for a bad address...
            where = address or "a local Ray"
            raise ClusterError(
                f"cannot start or reach {where}: {type(e).__name__}: {e}",
                hint="check --address (e.g. auto, or ray://HEAD:10001)",
            ) from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    # Ray Data reserves a share of the cluster per operator; on a few CPUs with three model
    # pools that starves the decode tasks (measured: 390 s instead of seconds on 2 CPUs).
    ctx.op_resource_reservation_enabled = False
    ctx.execution_options.preserve_order = True  # the driver's dedup keeps the first file
    return ray


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A cluster address that no one answers fails now, in one line: Ray itself retries for
    minutes. ``auto`` and None (a local Ray) are left to Ray."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto",
            hint="e.g. --address ray://head.example:10001",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ClusterError(
            f"cannot reach a Ray cluster at {host}:{port}: {reason}; nothing was written",
            hint="is a Ray head node running there? check --address",
        ) from None
