"""The remote pool's asyncio engine: jobs as coroutines on one event loop per process.

Messages are taken many at a time through the broker's transport (``broker.transports``), not Celery's
consumer. A take's fresh jobs are read and started in one statement each (``starting``),
their HTTP calls run concurrently on the loop (``caller``), and their answers are recorded many at once
(``recording``) before their messages are acknowledged: a process killed at any moment leaves each
message unacknowledged until its job's final record is committed, and the job's redelivery finds it final.

Everything else a job may need (a retry's message, a fallback, a stream, a deadline, the cache, a bulk
message, a bad message, a webhook) runs the threads' path (``workers.execution``) in a small thread pool,
the same code as the other pools: the loop only carries the common case, and the policies stay one.
"""
