"""Streaming trace writer: buffers whole tokens and writes row groups of bounded size, atomically."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_placement.atomic import create_new, done_with, ensure_folder, os_cause, temporary_names
from moe_placement.errors import PlacementError
from moe_placement.traces.schema import TraceMeta, arrow_schema


class TraceWriter:
    """Write a trace chunk by chunk; the file appears at ``path`` only on a clean :meth:`close`.

    Each :meth:`write` takes ``n`` complete tokens: ``expert_ids[layers, n, k]`` and
    ``weights[layers, n, k]``; experts are re-ordered by descending weight so ``[..., 0]`` is the top-1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: TraceMeta,
        *,
        with_domain: bool = False,
        row_group_tokens: int = 32768,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.with_domain = with_domain
        self.row_group_tokens = max(1, row_group_tokens)
        self.schema = arrow_schema(meta, with_domain)
        if self.path.is_dir():
            raise PlacementError(f"cannot write {self.path}: it is a folder")
        ensure_folder(self.path.parent)
        # the name is known before the file exists (atomic.temporary_names), so a signal that lands
        # just after its creation still has it removed below
        self._tmp: Path | None = None
        names = temporary_names(self.path, ".tmp")
        try:
            for self._tmp in names:
                if create_new(self._tmp):
                    break
            else:
                self._tmp = None  # every name taken: none of those files is ours
                raise PlacementError(f"cannot write {self.path}: no free temporary name next to it")
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
                self._tmp, self.schema, compression="zstd"
            )
        except OSError as exc:
            self._remove_temporary()
            raise PlacementError(f"cannot write {self.path}: {os_cause(exc)}") from None
        except BaseException:  # SIGTERM (moe_placement.interrupt.Terminated) or Ctrl-C right here
            self._remove_temporary()
            raise
        self._buffer: list[tuple[np.ndarray, ...]] = []
        self._buffered = 0
        self.tokens_written = 0

    def write(
        self,
        step: np.ndarray,
        seq_id: np.ndarray,
        pos: np.ndarray,
        expert_ids: np.ndarray,
        weights: np.ndarray,
        domain: np.ndarray | None = None,
    ) -> None:
        meta = self.meta
        expert_ids = np.asarray(expert_ids)
        weights = np.asarray(weights, dtype=np.float32)
        n = len(seq_id)
        if (
            expert_ids.shape != (meta.num_moe_layers, n, meta.top_k)
            or weights.shape != expert_ids.shape
        ):
            raise PlacementError(
                f"trace writer: expected expert_ids/weights of shape {(meta.num_moe_layers, n, meta.top_k)}, "
                f"got {expert_ids.shape} and {weights.shape}"
            )
        if n == 0:
            return
        if expert_ids.min() < 0 or expert_ids.max() >= meta.num_experts:
            raise PlacementError("trace writer: expert id out of range")
        if self.with_domain and domain is None:
            raise PlacementError("trace writer: this trace has a domain column; pass domain")
        order = np.argsort(-weights, axis=2, kind="stable")
        expert_ids = np.take_along_axis(expert_ids, order, axis=2).astype(np.int16)
        weights = np.take_along_axis(weights, order, axis=2)
        dom = np.asarray(domain, dtype=object) if domain is not None else np.empty(0, dtype=object)
        self._buffer.append(
            (
                np.asarray(step, dtype=np.int32),
                np.asarray(seq_id, dtype=np.int64),
                np.asarray(pos, dtype=np.int32),
                expert_ids,
                weights,
                dom,
            )
        )
        self._buffered += n
        while self._buffered >= self.row_group_tokens:
            self._flush(self.row_group_tokens)

    def _flush(self, limit: int | None = None) -> None:
        if not self._buffered or self._writer is None:
            return
        step, seq, pos, ids, wts, dom = (
            np.concatenate([b[i] for b in self._buffer], axis=1 if i in (3, 4) else 0)
            for i in range(6)
        )
        take = self._buffered if limit is None else min(limit, self._buffered)
        rest = (step[take:], seq[take:], pos[take:], ids[:, take:], wts[:, take:], dom[take:])
        self._write_group(
            step[:take], seq[:take], pos[:take], ids[:, :take], wts[:, :take], dom[:take]
        )
        self._buffered -= take
        self._buffer = [rest] if self._buffered else []

    def _write_group(self, step, seq, pos, ids, wts, dom) -> None:  # type: ignore[no-untyped-def]
        layers, n, k = ids.shape
        columns: dict[str, pa.Array] = {
            "step": pa.array(np.tile(step, layers), pa.int32()),
            "seq_id": pa.array(np.tile(seq, layers), pa.int64()),
            "pos": pa.array(np.tile(pos, layers), pa.int32()),
            "layer": pa.array(np.repeat(np.arange(layers, dtype=np.int16), n), pa.int16()),
            "expert_ids": pa.FixedSizeListArray.from_arrays(
                pa.array(ids.reshape(-1), pa.int16()), k
            ),
            "weights": pa.FixedSizeListArray.from_arrays(
                pa.array(wts.reshape(-1), pa.float32()), k
            ),
        }
        if self.with_domain:
            columns["domain"] = pa.array(np.tile(dom, layers).tolist(), pa.string())
        table = pa.Table.from_pydict(columns, schema=self.schema)
        assert self._writer is not None
        try:
            self._writer.write_table(table, row_group_size=table.num_rows)
        except OSError as exc:
            raise PlacementError(f"cannot write {self.path}: {os_cause(exc)}") from None
        self.tokens_written += n

    def close(self) -> Path:
        """Flush, close and move the file into place."""
        if self._writer is None:
            return self.path
        try:
            self._flush()
            self._writer.close()
            self._writer = None
            if self.tokens_written == 0:
                raise PlacementError("trace writer: no tokens were written")
            assert self._tmp is not None  # the writer was open
            os.replace(self._tmp, self.path)
            done_with(self._tmp)
        except OSError as exc:  # a full disk shows here, at the last flush or the rename
            self.abort()
            raise PlacementError(f"cannot write {self.path}: {os_cause(exc)}") from None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temporary file, whatever state the writer is in."""
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()
        except OSError:
            pass  # the file is being dropped: a failed flush does not matter
        finally:
            self._remove_temporary()

    def _remove_temporary(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            done_with(self._tmp)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
