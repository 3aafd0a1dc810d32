"""Feeds for tools outside failstore: ``failstore publish`` copies every table and stored query
result into a PostgreSQL schema that BI tools read natively; ``failstore export`` writes them
to Parquet, CSV or one DuckDB file. Both read the store through the read-only SQL engine at one
pinned version per table and apply the same column conventions (``feeds.columns``).
"""
