"""Global options shared by every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass
class State:
    store: Path | None = None
    debug: bool = False

    def open_store(self, create: bool = False):  # -> failstore.store.Store
        from failstore.store import Store

        return Store(self.store, create=create)


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, State) else State()
