"""kombu's Redis transport, with a Redis at ``maxmemory`` taken for a Redis that cannot be reached.

A Redis that refuses writes (``OOM command not allowed when used memory > 'maxmemory'``) raises a response
error, which kombu counts as a channel error: Celery's consumer does not catch those, and the worker exits
("Unrecoverable error: OutOfMemoryError"). Counted as a connection error, it makes the consumer wait and
connect again, as it does when Redis restarts, until writes are taken again; what the worker had taken but not
recorded waits in the database, and the sweeper publishes it again once Redis has room.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import OutOfMemoryError


class Transport(kombu_redis.Transport):
    connection_errors = (*kombu_redis.Transport.connection_errors, OutOfMemoryError)
