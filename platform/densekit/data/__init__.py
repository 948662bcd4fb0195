"""Data at the edges (text formats), the internal Parquet records, and the generated task."""
