"""Child process of the ingest benchmark: the naive way, pandas.read_csv then DataFrame.to_sql.

What someone writes first: read the whole file into a DataFrame, name the
columns like the table's, add the date from the file name, and ``to_sql`` it
with pandas' defaults (SQLAlchemy's multi-row INSERTs; the whole frame in
memory). No validation, no Kafka, no dedup. Prints one JSON line on stdout.

Usage: ``python -m bench._pandas CSV DATABASE_URL SCHEMA.TABLE YYYY-MM-DD``
"""
from __future__ import annotations

import json
import sys
import time


def main() -> int:
    path, url, target, day = sys.argv[1:5]
    t_start = time.monotonic()
    import pandas as pd
    import sqlalchemy

    schema, table = target.split(".")
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    t_read = time.monotonic()
    frame = pd.read_csv(path)
    frame = frame.rename(columns={"description": "name"})
    frame["transaction_date"] = day
    t_sql = time.monotonic()
    frame.to_sql(table, engine, schema=schema, if_exists="append", index=False)
    t_done = time.monotonic()
    engine.dispose()
    print(json.dumps({"t_start": t_start, "t_read": t_read, "t_sql": t_sql, "t_done": t_done, "rows": len(frame)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
