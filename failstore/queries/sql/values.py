"""SQL result values as JSON values: one rule for every JSON a query's rows become (the CLI's
``--format json``, the serve API)."""

from __future__ import annotations

import base64
import math
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def jsonable(v: Any) -> Any:
    """``v`` (a value of ``Table.to_pylist()``) as a JSON value: NaN and infinities null,
    dates and times ISO 8601, decimals floats, binary base64, anything else its text."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return str(v)
