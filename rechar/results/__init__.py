"""The results store: a run folder's append-only logs, its Parquet tables and manifest (store),
and a point's figures over its rounds (rounds)."""
