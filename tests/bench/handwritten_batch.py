"""The hand-written baseline batch scoring is measured against: COPY out, pyarrow parse, predict, pyarrow write, COPY in.

Usage: python tests/bench/handwritten_batch.py PG_URL SOURCE_TABLE OUT_TABLE MODEL.skops [FIRST_ID LAST_ID]
One process, no chunks, no framework: what this machine does with the obvious tools. With FIRST_ID and LAST_ID it
scores only those ids (two processes side by side split a table this way). Prints one JSON line of timings.
"""

from __future__ import annotations

import io
import json
import sys
import time

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import skops.io as sio

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main(url: str, source: str, out: str, model_path: str, first: str | None = None, last: str | None = None) -> None:
    where = "" if first is None else f" WHERE id BETWEEN {int(first)} AND {int(last or first)}"
    model = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
    t0, cpu0, began = time.perf_counter(), time.process_time(), time.time()
    with psycopg.connect(url) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy(f"COPY (SELECT id, {', '.join(FEATURES)} FROM {source}{where}) TO STDOUT (FORMAT csv)") as copy:
            for block in copy:
                buf.write(block)
        t1 = time.perf_counter()
        table = pacsv.read_csv(io.BytesIO(buf.getvalue()), read_options=pacsv.ReadOptions(column_names=["id", *FEATURES]))
        t2 = time.perf_counter()
        X = pa.table({f: table[f] for f in FEATURES}).to_pandas().to_numpy()
        predictions = model.predict(X)
        t3 = time.perf_counter()
        result = io.BytesIO()
        pacsv.write_csv(pa.table({"id": table["id"], "prediction": predictions}), result,
                        pacsv.WriteOptions(include_header=False))
        conn.execute(f"CREATE TABLE {out} (id bigint, prediction bigint)")
        with conn.cursor().copy(f"COPY {out} (id, prediction) FROM STDIN (FORMAT csv)") as copy:
            copy.write(result.getbuffer())
        conn.commit()
        t4 = time.perf_counter()
    print(json.dumps({"rows": table.num_rows, "seconds": t4 - t0, "copy_out": t1 - t0, "parse": t2 - t1,
                      "predict": t3 - t2, "write_copy_in": t4 - t3,
                      "cpu_s": time.process_time() - cpu0, "began": began, "ended": time.time()}))


if __name__ == "__main__":
    main(*sys.argv[1:7])
