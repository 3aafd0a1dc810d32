"""Arrow schemas of the store's tables.

Strings are ``pa.string()`` (never ``large_string``: Lance BTree indexes and DuckDB joins want
one string type). Fixed-width vectors are ``pa.list_(pa.float32(), D)``; their widths depend on
the models, so the ``images`` schema is built per store from the models it was first ingested
with. ``predictions`` holds rows of target models of different widths, so its probability and
embedding vectors are variable-length ``list<float32>``; each model's widths are in ``models``.
"""

from __future__ import annotations

import pyarrow as pa

BOX_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)

# Columns every images table has, in this order; model columns and metadata follow.
IMAGE_BASE_FIELDS: list[pa.Field] = [
    pa.field("image_id", pa.string(), nullable=False),  # sha256 of the file bytes
    pa.field("uri", pa.string(), nullable=False),
    pa.field("split", pa.string()),
    pa.field("label", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("boxes", pa.list_(BOX_TYPE)),  # pixel coordinates of the original image
    pa.field("mask", pa.binary()),  # ground-truth mask, PNG bytes, mode L, same size as image
    pa.field("ingested_at", pa.timestamp("us", tz="UTC")),
]
IMAGE_BASE_NAMES = [f.name for f in IMAGE_BASE_FIELDS]

# The file an images row was read from, as fstat saw it then (null when its mtime was too
# recent to trust, and in stores from before these columns): a rerun does not read a file
# whose uri, size and mtime match a row. Added to older stores by their next ingest.
FILE_FIELDS: list[pa.Field] = [
    pa.field("stat_size", pa.int64()),  # bytes
    pa.field("stat_mtime_ns", pa.int64()),  # st_mtime_ns: nanoseconds since the Unix epoch
]

# Model-dependent image columns: (name, kind). Kind "vector" gets the model's width.
CLIP_COLUMNS = ("clip_model", "clip_embedding", "tag_scores", "tags")
ROBUST_COLUMNS = ("robust_model", "robust_features")


def vector(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def clip_fields(embedding_dim: int, n_tags: int) -> list[pa.Field]:
    return [
        pa.field("clip_model", pa.string()),
        pa.field("clip_embedding", vector(embedding_dim)),
        pa.field("tag_scores", vector(n_tags)),
        pa.field("tags", pa.list_(pa.string())),
    ]


def robust_fields(dim: int) -> list[pa.Field]:
    return [
        pa.field("robust_model", pa.string()),
        pa.field("robust_features", vector(dim)),
    ]


PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("target", pa.string()),  # the image's label mapped to the model's class names
        pa.field("prediction", pa.string()),
        pa.field("prediction_index", pa.int32()),
        pa.field("confidence", pa.float32()),
        pa.field("correct", pa.bool_()),
        pa.field("probabilities", pa.list_(pa.float32())),
        pa.field("embedding", pa.list_(pa.float32())),
        pa.field("predicted_at", pa.timestamp("us", tz="UTC")),
    ]
)

MODELS_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # target | robust | clip
        pa.field("spec", pa.string()),
        pa.field("checkpoint_sha256", pa.string()),
        pa.field("preprocess", pa.string()),  # JSON of Preprocess
        pa.field("layer", pa.string()),
        pa.field("embedding_dim", pa.int32()),
        pa.field("class_names", pa.list_(pa.string())),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("prompts", pa.list_(pa.string())),  # per tag, a JSON list of prompt strings
        pa.field("thresholds", pa.list_(pa.float32())),
        pa.field("head_rows", pa.int32()),
        pa.field("head_cols", pa.int32()),
        pa.field("head_weight", pa.list_(pa.float32())),  # row-major (head_rows x head_cols)
        pa.field("head_bias", pa.list_(pa.float32())),
        pa.field("extra", pa.string()),  # JSON: package versions, label map, notes
        pa.field("registered_at", pa.timestamp("us", tz="UTC")),
    ]
)

INGEST_ERRORS_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("time", pa.timestamp("us", tz="UTC")),
    ]
)

SAVED_QUERIES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("sql", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("parameters", pa.string()),  # JSON object name -> default (SQL literal text)
        pa.field("saved_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One saliency map per (model, method with its settings, explained class kind, image): written by
# `failstore saliency` (keyed, so a rerun computes nothing new), read by `failstore coverage`.
SALIENCY_MAPS_SCHEMA = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("settings", pa.string(), nullable=False),  # JSON: method params, layer, size
        pa.field("explain", pa.string(), nullable=False),  # 'prediction' | 'label'
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class", pa.string()),  # the class whose logit was explained
        pa.field("class_index", pa.int32()),
        pa.field("height", pa.int32()),  # the map's size
        pa.field("width", pa.int32()),
        pa.field("map", pa.list_(pa.float32())),  # row-major, summed over colour channels (signed)
        pa.field("x0", pa.float64()),  # the window the map covers, in image pixel coordinates
        pa.field("y0", pa.float64()),
        pa.field("x1", pa.float64()),
        pa.field("y1", pa.float64()),
        pa.field("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One row per analysis run (and per demo table write): what was computed, from what, when.
ANALYSIS_RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("analysis", pa.string()),
        pa.field("result_table", pa.string()),
        pa.field("params", pa.string()),  # JSON of the resolved parameters
        pa.field("run_key", pa.string()),  # JSON of the parameters that tell runs apart to readers
        pa.field("source_versions", pa.string()),  # JSON {table: Lance version}
        pa.field("rows", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("used_at", pa.timestamp("us", tz="UTC")),  # last fit that computed or reused it
    ]
)

# Key columns for upserts.
KEYS: dict[str, list[str]] = {
    "images": ["image_id"],
    "predictions": ["model", "image_id"],
    "models": ["name"],
    "ingest_errors": ["uri"],
    "saved_queries": ["name"],
    "analysis_runs": ["run_id"],
    "saliency_maps": ["model", "method", "settings", "explain", "image_id"],
}

CORE_TABLES = ("images", "predictions", "models", "ingest_errors")
