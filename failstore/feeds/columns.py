"""Column conventions of published and exported data: what a BI tool or a file format can
hold, decided from the Arrow type of each column.

* **Bulky columns** are left out unless ``with_vectors``: vectors (a fixed-size list of numbers,
  or a list of single-precision floats: embeddings, probabilities, saliency maps, CAVs, model
  heads) and binary values (masks). With ``with_vectors`` they are kept, fixed-size lists as
  plain lists (PostgreSQL ``real[]``), binary values as base64 text in CSV.
* **Timestamps** carry a time zone: a naive timestamp is read as UTC.
* **Nested values**: lists of scalars stay arrays (PostgreSQL ``text[]``, ``bigint[]``...),
  except in CSV; a struct, a map, a list of structs or a list of lists becomes JSON text
  (PostgreSQL and CSV), since neither holds them natively. Parquet and DuckDB keep them.
* **Unsigned integers** widen to the signed type that holds them (PostgreSQL has none).
* Table and column names are unchanged.

The conventions are applied in SQL (one ``SELECT`` list over the query's result), so DuckDB
converts batch by batch while the result streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TARGETS = ("postgresql", "parquet", "csv", "duckdb")
JSON_TARGETS = {"postgresql", "csv"}  # nested values that are not arrays of scalars -> JSON
WIDER = {"uint8": "SMALLINT", "uint16": "INTEGER", "uint32": "BIGINT", "uint64": "DECIMAL(20, 0)"}


def quote(name: str) -> str:
    """A double-quoted SQL identifier (DuckDB and PostgreSQL alike)."""
    return '"' + name.replace('"', '""') + '"'


def is_vector(t: pa.DataType) -> bool:
    """A fixed-size list of numbers, or a list of single-precision floats."""
    if pa.types.is_fixed_size_list(t):
        v = t.value_type
        return pa.types.is_floating(v) or pa.types.is_integer(v)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.types.is_float32(t.value_type) or pa.types.is_float16(t.value_type)
    return False


def is_bulky(t: pa.DataType) -> bool:
    return is_vector(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_scalar(t: pa.DataType) -> bool:
    return not (pa.types.is_nested(t) or pa.types.is_dictionary(t))


@dataclass(frozen=True)
class Conventions:
    """How one result's columns are published: the SQL select list and what was left out."""

    select: str  # the select list over the source (alias ``src``)
    left_out: tuple[str, ...]  # bulky columns left out
    as_json: tuple[str, ...]  # nested columns written as JSON text


def conventions(schema: pa.Schema, target: str, *, with_vectors: bool = False) -> Conventions:
    """The select list that gives ``schema``'s columns the ``target``'s conventions."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    items: list[str] = []
    left_out: list[str] = []
    as_json: list[str] = []
    for field in schema:
        name, t = field.name, field.type
        col = f"src.{quote(name)}"
        if is_bulky(t) and not with_vectors:
            left_out.append(name)
            continue
        expr = col
        if pa.types.is_timestamp(t) and t.tz is None:
            expr = f"({col} AT TIME ZONE 'UTC')"
        elif pa.types.is_fixed_size_list(t):
            expr = f"CAST({col} AS {_duck_scalar(t.value_type)}[])"
            if target == "csv":
                expr = f"CAST(to_json({expr}) AS VARCHAR)"
                as_json.append(name)
        elif pa.types.is_unsigned_integer(t) and target == "postgresql":
            expr = f"CAST({col} AS {WIDER[str(t)]})"
        elif pa.types.is_dictionary(t):
            expr = f"CAST({col} AS VARCHAR)"
        elif (pa.types.is_binary(t) or pa.types.is_large_binary(t)) and target == "csv":
            expr = f"base64({col})"
        elif pa.types.is_nested(t) and target in JSON_TARGETS:
            arrays_ok = target == "postgresql" and _is_scalar_list(t)
            if not arrays_ok:
                expr = f"CAST(to_json({col}) AS VARCHAR)"
                as_json.append(name)
            elif pa.types.is_unsigned_integer(t.value_type):
                expr = f"CAST({col} AS {WIDER[str(t.value_type)]}[])"
        items.append(f"{expr} AS {quote(name)}")
    return Conventions(", ".join(items) or "NULL AS nothing", tuple(left_out), tuple(as_json))


def _is_scalar_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_scalar(t.value_type)


def _duck_scalar(t: pa.DataType) -> str:
    if pa.types.is_float32(t) or pa.types.is_float16(t):
        return "FLOAT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    return "BIGINT"
