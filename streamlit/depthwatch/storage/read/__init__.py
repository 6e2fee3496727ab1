"""The read side, organised by data: every reader of the database, shared by
the dashboard, the exports, `depthwatch gaps`, the Python API and the History
page.

- streams: which streams are recorded, and the ids that key their rows;
- book: the packed log, message by message (replays, exports);
- chunks: small reads of a few packed chunks (newest, samples, around a moment);
- tops: per-second tops and periodic snapshots (live charts, export estimates);
- events: feed events and collector heartbeats;
- trades: recorded trades;
- health: collectors and what the database holds;
- legacy: every schema 1-3 reader, merged in by the others;
- rows: the records they return; frames: the dashboard's DataFrame columns.

pandas is imported only inside the readers that build a DataFrame (the
dashboard's): an export or the collector never loads it (~35 MB and ~0.5 s of
a CSV export's start, measured against c1fcc69).
"""
