"""OpenAI-compatible batches: their state machine (``progress``) and how their files are read (``lines``)."""
