"""Split a source into ranges that any worker can score on its own: the chunks of a job spread over a pool.

PostgreSQL: by key ranges (a primary or unique key of any width, or the job's key) found in one ordered pass over
the key, or, for a table with no key, by ranges of physical blocks (``ctid``, counted and read through TID range
scans; rows added after planning in new blocks are outside the job, like a snapshot's). Parquet files:
by row ranges. Each range records its first row's position and its row count, so every chunk knows its
``row_number`` values, and a source that changed while the job ran (a chunk that reads another count) fails
the job instead of scoring a row twice or never.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from psycopg import sql
from pymongo.database import Database

from runtime import batch_pg
from runtime.batch_arrow import BatchError
from runtime.batch_sources import file_path, key_columns, source_url
from server.core import files, sqlsource
from server.core.settings import Settings

Chunk = dict[str, Any]  # {"n", "start", "rows"} and "lo"/"hi" (key text values) or "blocks" ([first, end))


def splittable(source: dict[str, Any], postgres: bool) -> bool:
    """Tell whether a source is read range by range (else in one pass by one worker)."""
    if source["kind"] == "sql":
        return postgres and source.get("order") in ("key", "ctid")
    return source["kind"] == "file" and files.file_format(Path(source["file"])) == "parquet"


def _key_plan(conn: Any, relation: sql.Composable, keys: list[str], chunk_rows: int) -> list[Chunk]:
    """Find every chunk_rows-th key by walking a cursor over the key in order: the server skips the rows between
    (MOVE sends nothing back), one snapshot sees every boundary and the total."""
    cols = sql.SQL(", ").join(map(sql.Identifier, keys))
    # Aliased: ORDER BY must name the key columns, not text outputs of the same name (text sorts differently).
    texts = sql.SQL(", ").join(sql.SQL("{}::text AS {}").format(sql.Identifier(k), sql.Identifier(f"modeldeck_k{i}"))
                               for i, k in enumerate(keys))
    starts: list[tuple[int, list[str]]] = []
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DECLARE modeldeck_plan NO SCROLL CURSOR FOR SELECT {} FROM {} ORDER BY {}").format(
            texts, relation, cols))
        total = 0
        while True:
            cur.execute("FETCH 1 FROM modeldeck_plan")
            row = cur.fetchone()
            if row is None:
                break
            starts.append((total, list(row)))
            cur.execute(sql.SQL("MOVE FORWARD {} IN modeldeck_plan").format(sql.Literal(chunk_rows - 1)))
            total += 1 + max(cur.rowcount, 0)
        cur.execute("CLOSE modeldeck_plan")
    return [{"n": i + 1, "start": start, "rows": min(chunk_rows, total - start), "lo": lo,
             "hi": starts[i + 1][1] if i + 1 < len(starts) else None} for i, (start, lo) in enumerate(starts)]


def _block_plan(conn: Any, relation: sql.Composable, chunk_rows: int) -> list[Chunk]:
    name = sql.Literal(relation.as_string(conn))
    blocks, density = conn.execute(sql.SQL(
        "SELECT pg_relation_size({name}::regclass) / current_setting('block_size')::int, "
        "CASE WHEN relpages > 0 AND reltuples > 0 THEN reltuples / relpages END FROM pg_class WHERE oid = {name}::regclass"
    ).format(name=name)).fetchone()
    if density is None and blocks:  # never analyzed: measure the rows per block
        density = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(relation)).fetchone()[0] / blocks
    step = max(1, int(chunk_rows / max(float(density or 1), 1.0)))
    # Each range counted through a TID range scan: one pass over the table, no per-row conversion.
    counts = conn.execute(sql.SQL(
        "SELECT s.blk, (SELECT count(*) FROM {rel} WHERE ctid >= format('(%s,0)', s.blk)::tid "
        "AND ctid < format('(%s,0)', s.blk + {step})::tid) FROM generate_series(0, {last}, {step}) AS s(blk) ORDER BY 1"
    ).format(rel=relation, step=sql.Literal(step), last=sql.Literal(max(int(blocks) - 1, 0)))).fetchall()
    chunks: list[Chunk] = []
    start = 0
    for block, count in counts:
        if count:
            chunks.append({"n": len(chunks) + 1, "start": start, "rows": int(count), "blocks": [int(block), int(block) + step]})
            start += int(count)
    return chunks


def _parquet_plan(path: Path, chunk_rows: int) -> list[Chunk]:
    import pyarrow.parquet as pq

    total = pq.ParquetFile(path).metadata.num_rows
    return [{"n": i + 1, "start": s, "rows": min(chunk_rows, total - s)} for i, s in enumerate(range(0, total, chunk_rows))]


def plan_chunks(settings: Settings, db: Database, source: dict[str, Any], chunk_rows: int) -> list[Chunk]:
    """Return a source's ranges of at most chunk_rows rows, in source order."""
    if source["kind"] == "file":
        return _parquet_plan(file_path(db, source), chunk_rows)
    url = source_url(settings, db, source["datasource"])
    with sqlsource.read_only(url, settings.batch_statement_timeout_s) as conn:
        raw = conn.connection.driver_connection
        relation = batch_pg.relation_of(source)
        if source["order"] == "key":
            return _key_plan(raw, relation, key_columns(source), chunk_rows)
        return _block_plan(raw, relation, chunk_rows)


def _range_filter(source: dict[str, Any], chunk: Chunk, types: dict[str, str]) -> sql.Composable:
    if "blocks" in chunk:
        first, end = chunk["blocks"]
        lower = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
        upper = sql.SQL("ctid < {}::tid").format(sql.Literal(f"({end},0)"))
        return sql.SQL("WHERE {} AND {} ORDER BY ctid").format(lower, upper)
    keys = key_columns(source)
    cols = sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, keys)))

    def values(texts: list[str]) -> sql.Composable:
        return sql.SQL("({})").format(sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(types[k])) for k, v in zip(keys, texts)))

    parts = [sql.SQL("{} >= {}").format(cols, values(chunk["lo"]))]
    if chunk["hi"] is not None:
        parts.append(sql.SQL("{} < {}").format(cols, values(chunk["hi"])))
    return sql.SQL("WHERE {} ORDER BY {}").format(sql.SQL(" AND ").join(parts), sql.SQL(", ").join(map(sql.Identifier, keys)))


def locate(settings: Settings, db: Database, source: dict[str, Any]) -> str | Path:
    """Return where a source's rows are: a SQL data source's URL, or a file's confined path."""
    return file_path(db, source) if source["kind"] == "file" else source_url(settings, db, source["datasource"])


def read_chunk(settings: Settings, where: str | Path, source: dict[str, Any], chunk: Chunk, columns: list[str],
               as_float: set[str], types: dict[str, str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Read one planned range's columns; return it and, for PostgreSQL, the columns' types (pass them back in
    for the job's next chunks to skip looking them up)."""
    if isinstance(where, Path):
        table, types = _parquet_range(where, chunk, columns), {}
    else:
        with sqlsource.read_only(where, settings.batch_statement_timeout_s) as conn:
            raw = conn.connection.driver_connection
            relation = batch_pg.relation_of(source)
            if types is None:
                types = batch_pg.source_for(raw, source, list(dict.fromkeys(columns + key_columns(source)))).types
            statement = sql.SQL("SELECT {} FROM {} {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)),
                                                              relation, _range_filter(source, chunk, types))
            arrow = {c: batch_pg.arrow_type(types[c], c in as_float) for c in columns}
            table = batch_pg.copy_out(raw, statement, arrow)
    if table.num_rows != chunk["rows"]:
        raise BatchError("source_changed", f"chunk {chunk['n']} of the source now has {table.num_rows} rows where the "
                                           f"job's plan found {chunk['rows']}: the source changed while the job ran "
                                           "(rows inserted, deleted or updated); run the job again, on a copy that "
                                           "stays still if the source keeps changing")
    return table, types


def _parquet_range(path: Path, chunk: Chunk, columns: list[str]) -> pa.Table:
    """Read rows [start, start + rows) of a Parquet file, decoding only the row groups that hold them."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    start, end = chunk["start"], chunk["start"] + chunk["rows"]
    groups, first_row, offset = [], 0, 0
    for i in range(pf.metadata.num_row_groups):
        size = pf.metadata.row_group(i).num_rows
        if first_row < end and first_row + size > start:
            if not groups:
                offset = start - first_row
            groups.append(i)
        first_row += size
    batches, skip, want = [], offset, chunk["rows"]
    for batch in pf.iter_batches(batch_size=max(want, 1024), row_groups=groups, columns=columns):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch = batch.slice(skip, want)
        skip, want = 0, want - batch.num_rows
        batches.append(batch)
        if want <= 0:
            break
    return pa.Table.from_batches(batches, schema=pf.schema_arrow.empty_table().select(columns).schema)
