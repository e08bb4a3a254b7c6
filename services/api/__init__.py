"""The ingest API (FastAPI). It validates, streams media to storage, writes job rows and enqueues
job ids. It never imports torch."""
