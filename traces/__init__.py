"""Routing traces: the versioned Parquet format, a streaming reader, derived statistics, load-only
inputs (``logical_count`` JSON) and a seeded synthetic generator."""

from moe_placement.traces.reader import TokenChunk, TraceFile
from moe_placement.traces.schema import TRACE_SCHEMA_VERSION, TraceMeta
from moe_placement.traces.writer import TraceWriter

__all__ = ["TRACE_SCHEMA_VERSION", "TokenChunk", "TraceFile", "TraceMeta", "TraceWriter"]
