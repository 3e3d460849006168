"""Routing traces: the versioned Parquet format, a streaming reader, derived statistics, load-only
inputs (``logical_count`` JSON) and a seeded synthetic generator."""

from traces.reader import TokenChunk, TraceFile
from traces.schema import TRACE_SCHEMA_VERSION, TraceMeta
from traces.writer import TraceWriter

__all__ = ["TRACE_SCHEMA_VERSION", "TokenChunk", "TraceFile", "TraceMeta", "TraceWriter"]
