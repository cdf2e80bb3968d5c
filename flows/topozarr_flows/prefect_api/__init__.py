"""Our use of Prefect's API: the client, concurrency slots, crash recovery, outage retries."""
