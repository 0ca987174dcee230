"""File data sources: CSV and Parquet under the configured data roots, never outside them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from server.core.errors import ForbiddenError, InvalidInputError, NotFoundError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def check_directory(data_roots: tuple[Path, ...], path: str) -> Path:
    """Return a data source's directory: an existing directory inside a data root, reached without symlinks."""
    if not data_roots:
        raise InvalidInputError("file data sources are disabled: set MODELDECK_DATA_ROOTS to the directories they may use")
    given = Path(path)
    if not given.is_absolute():
        raise InvalidInputError(f"field 'path': expected an absolute directory inside a data root "
                                f"({', '.join(str(r) for r in data_roots)}), got '{path}'")
    for root in data_roots:
        root = root.resolve()
        try:
            relative = given.relative_to(root)
        except ValueError:
            continue
        return confine(root, str(relative) if str(relative) != "." else "", want_dir=True)
    raise ForbiddenError(f"field 'path': '{path}' is outside the data roots ({', '.join(str(r) for r in data_roots)})")


def confine(root: Path, relative: str, want_dir: bool = False) -> Path:
    """Resolve a relative path inside root, refusing absolute paths, '..' and symlinks anywhere on the way."""
    pure = PurePosixPath(relative)
    if relative.startswith(("/", "\\")) or pure.is_absolute() or (len(relative) > 1 and relative[1] == ":"):
        raise ForbiddenError(f"absolute paths are refused; give a path relative to the data source, got '{relative}'")
    if ".." in pure.parts:
        raise ForbiddenError(f"'..' is refused in a data source path, got '{relative}'")
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            raise ForbiddenError(f"symlinks are refused in a data source path: '{relative}' passes through a link")
    resolved = current.resolve()
    # Belt and braces: whatever the checks above missed (a link in the root's own path is the admin's choice).
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise ForbiddenError(f"'{relative}' resolves outside its data source")
    if want_dir:
        if not resolved.is_dir():
            raise NotFoundError(f"directory '{resolved}' does not exist")
    elif not resolved.is_file():
        raise NotFoundError(f"file '{relative}' does not exist in the data source")
    return resolved


def file_format(path: Path) -> str:
    """Return 'csv' or 'parquet' from a file's suffix."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"file '{path.name}': expected a .csv or .parquet file")
    return fmt


def iter_batches(path: Path, batch_rows: int) -> Iterator[Any]:
    """Stream a CSV or Parquet file as pyarrow record batches of bounded size."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if file_format(path) == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        return
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=4 * 1024 * 1024))
    yield from reader


def iter_rows(path: Path, batch_rows: int) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """Return a file's column names and an iterator of row chunks (tuples) of at most batch_rows."""
    batches = iter_batches(path, batch_rows)
    first = next(batches, None)
    if first is None:
        return [], iter(())
    names = list(first.schema.names)

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        pending: list[tuple[Any, ...]] = []
        for batch in _chain(first, batches):
            pending.extend(zip(*(col.to_pylist() for col in batch.columns)))
            while len(pending) >= batch_rows:
                yield pending[:batch_rows]
                pending = pending[batch_rows:]
        if pending:
            yield pending

    return names, chunks()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def preview_file(path: Path, limit: int) -> dict[str, Any]:
    """Return a file's first rows and its columns with their types."""
    from server.core.sqlsource import json_value, value_type

    names, chunks = iter_rows(path, limit + 1)
    fetched = next(chunks, [])
    return {"columns": [{"name": n, "type": value_type([r[i] for r in fetched]), "db_type": None} for i, n in enumerate(names)],
            "rows": [[json_value(v) for v in row] for row in fetched[:limit]], "truncated": len(fetched) > limit}


def count_rows(path: Path) -> int:
    """Count a file's data rows: Parquet from its footer, CSV by lines (a quoted newline counts twice)."""
    import pyarrow.parquet as pq

    if file_format(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(4 * 1024 * 1024):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines + (last != b"\n") - 1, 0)
