"""The file catalog: its schema, its Parquet beside each backup, and the backup server's DuckDB
(no Prefect import; see schema.py, parquet.py, db.py)."""
