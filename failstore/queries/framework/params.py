"""Analysis parameters, declared once: type, default, limits, help text and CLI flag.

An analysis lists its parameters as ``Param`` declarations. The library checks values with
messages in library terms (``max_tags must be between 1 and 5, got 7``); the CLI builds its
options from the same declarations (``failstore.cli.analysis_options``) and shows the same
messages with the flag's name (``--max-tags must be between 1 and 5, got 7``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from failstore.errors import ConfigError

KINDS = (str, int, float, bool)


class ParamError(ConfigError):
    """A parameter value the analysis refuses. ``param`` is the library name, ``flag`` the CLI
    option; ``detail`` the rest of the message (``must be between 1 and 5, got 7``)."""

    def __init__(self, param: Param, detail: str, hint: str | None = None) -> None:
        self.param = param
        self.detail = detail
        super().__init__(f"{param.name} {detail}", hint=hint)

    def for_cli(self) -> ConfigError:
        """The same error, naming the CLI flag instead of the library parameter."""
        return ConfigError(f"{self.param.cli_flag} {self.detail}", hint=self.hint)


@dataclass(frozen=True)
class Param:
    """One analysis parameter.

    ``kind``: str, int, float or bool. ``optional``: None is allowed (it means "all" or "the
    store's default", as ``help`` says). ``many``: a list of values (CLI: ``csv`` takes them as
    one comma-separated value, otherwise the flag repeats). ``choices``: allowed values.
    ``low``/``high``: inclusive bounds for numbers. ``flag``: the CLI option if not
    ``--name-with-dashes``.
    """

    name: str
    default: Any
    help: str
    kind: type = str
    optional: bool = False
    many: bool = False
    csv: bool = False
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    flag: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"Param {self.name}: kind must be one of {KINDS}")
        if self.default is None and not self.optional:
            raise TypeError(f"Param {self.name}: default None needs optional=True")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value in canonical form (lists become sorted-free lists of the kind); raises
        ``ParamError`` with a message in library terms."""
        if value is None:
            if self.optional:
                return None
            raise ParamError(self, "is required (got None)")
        if self.many:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ParamError(self, f"must be a list of values, got {value!r}")
            items = [self._one(v) for v in value]
            if not items:
                if self.optional:
                    return None
                raise ParamError(self, "needs at least one value")
            return items
        return self._one(value)

    def _one(self, value: Any) -> Any:
        v = self._cast(value)
        if self.choices is not None and v not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ParamError(self, f"must be one of {allowed}, got {value!r}")
        if self.low is not None and self.high is not None and not self.low <= v <= self.high:
            raise ParamError(
                self, f"must be between {_num(self.low)} and {_num(self.high)}, got {v}"
            )
        if self.low is not None and self.high is None and v < self.low:
            raise ParamError(self, f"must be >= {_num(self.low)}, got {v}")
        if self.high is not None and self.low is None and v > self.high:
            raise ParamError(self, f"must be <= {_num(self.high)}, got {v}")
        return v

    def _cast(self, value: Any) -> Any:
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ParamError(self, f"must be true or false, got {value!r}")
        if kind is int:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value != int(value)
            ):
                raise ParamError(self, f"must be a whole number, got {value!r}")
            return int(value)
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(self, f"must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ParamError(self, f"must be a finite number, got {value!r}")
            return float(value)
        if not isinstance(value, str) or not value:
            raise ParamError(self, f"must be a non-empty string, got {value!r}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_params(declared: Sequence[Param], values: dict[str, Any]) -> dict[str, Any]:
    """Check every declared parameter's value; returns them in canonical form."""
    return {p.name: p.check(values[p.name]) for p in declared}
