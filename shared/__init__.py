"""Code shared by every vlmq process: config, database, job state machine, storage, queue."""
