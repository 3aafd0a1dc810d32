"""CLI commands built from an analysis's parameter declarations.

``analysis_command(cls, run, extra)`` makes a Typer command whose options are the analysis's
declared ``Param``s (flag, type, default and help taken from the declaration) followed by the
command's own options (``extra``: output format, limit...). Values go to ``cls(**params)``;
``run(ctx, estimator, **extra_values)`` fits and prints. A parameter error names the flag
(``--max-tags must be between 1 and 5, got 7``), the library's message with the flag's name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from failstore.queries.framework.analysis import Analysis
from failstore.queries.framework.params import Param, ParamError


def option_type(p: Param) -> Any:
    """The Python type Typer sees for a parameter."""
    if p.many:
        return str | None if p.csv else list[p.kind] | None  # type: ignore[name-defined]
    return p.kind | None if p.optional else p.kind  # type: ignore[operator]


def cli_default(p: Param) -> Any:
    if p.many and p.default is not None:
        return ",".join(map(str, p.default)) if p.csv else list(p.default)
    return p.default


def from_cli(p: Param, value: Any) -> Any:
    """A CLI value -> the library value (comma-separated lists split, empty lists None)."""
    if p.many and p.csv and isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return items or None
    if p.many and value is not None:
        return list(value) or None
    return value


def option_parameters(cls: type[Analysis]) -> list[inspect.Parameter]:
    """One keyword parameter per declared ``Param``, annotated for Typer."""
    out = []
    for p in cls.params:
        flags = [p.cli_flag] if p.kind is not bool else [f"{p.cli_flag}/--no-{p.cli_flag[2:]}"]
        help_text = p.help + (" Comma-separated." if p.many and p.csv else "")
        metavar = "<text>" if p.many and not p.csv else None
        option = typer.Option(*flags, help=help_text, metavar=metavar)
        annotation = Annotated[option_type(p), option]  # type: ignore[valid-type]
        out.append(
            inspect.Parameter(
                p.name, inspect.Parameter.KEYWORD_ONLY, default=cli_default(p),
                annotation=annotation,
            )
        )  # fmt: skip
    return out


def analysis_command(
    cls: type[Analysis],
    run: Callable[..., None],
    extra: list[inspect.Parameter],
) -> Callable[..., None]:
    """A Typer command function for ``cls``; ``run.__doc__`` is its help."""
    names = [p.name for p in cls.params]
    clash = sorted({p.name for p in extra} & set(names))
    if clash:
        raise TypeError(f"{cls.__name__}: command options {clash} clash with parameters")

    @functools.wraps(run)
    def command(ctx: typer.Context, **kwargs: Any) -> None:
        values = {p.name: from_cli(p, kwargs.pop(p.name)) for p in cls.params}
        try:
            estimator = cls(**values)
            run(ctx, estimator, **kwargs)
        except ParamError as e:
            raise e.for_cli() from e

    ctx_param = inspect.Parameter(
        "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )
    params = [ctx_param, *option_parameters(cls), *extra]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # Typer must read the new signature, not run's
    return command


def extra_option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """A command's own option (not an analysis parameter)."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )
