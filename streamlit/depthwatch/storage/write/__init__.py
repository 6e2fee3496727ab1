"""The write side: records in, PostgreSQL rows out (packing, the spill journal)."""
