"""The one exception tree of llm-runner-router, split by who handles it.

    RouterError
    ├── InvalidRequest            bad input; the job is recorded ``rejected`` and never retried
    ├── ConfigurationError        a bad catalogue or setting; fails at start with file, key and reason
    ├── SchemaNotCurrent          the database has no schema, or an older one: run `llm-router db upgrade`
    ├── PermanentError            retrying the same model cannot help
    │   ├── ModelNotFound         the model is unknown or not available here (fall back to the next model)
    │   ├── Unauthorised          the endpoint refused our credentials (401, 403)
    │   │   └── ModelGated        a gated Hub model this token may not read
    │   ├── RemoteRejected        the endpoint refused the input (400, 422)
    │   └── ModelFailed           the model raised on this input
    ├── HubUnavailable            the Hub cannot be asked: offline mode, or no answer from its endpoint
    ├── TransientError            the same call may succeed later (retried with a countdown)
    │   ├── ModelLoading          the endpoint is warming the model (HTTP 503)
    │   ├── RateLimited           the endpoint asks us to slow down (HTTP 429)
    │   ├── ServerError           other 5xx
    │   └── NetworkError          connect, reset, timeout
    └── JobError                  raised to the producer when a job ends badly
        ├── JobFailed
        ├── JobRejected
        ├── JobCancelled          its caller cancelled it
        ├── JobExpired            it did not start by its deadline
        └── JobTimeout            ``Job.wait`` ran out of time; the job itself goes on

Foreign exceptions (httpx, torch, pydantic) are translated into these once, at the boundary that meets them.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidRequest(RouterError, ValueError):
    """A request that breaks a limit or names something unknown. ``field`` names what is wrong."""

    def __init__(self, message: str, *, field: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.field = field
        self.problems = problems or [message]


class ConfigurationError(RouterError):
    """The catalogue or settings are unusable."""


class SchemaNotCurrent(RouterError):
    """The database has no schema, or one older than this code: nothing may use it before an upgrade."""


class PermanentError(RouterError):
    """Retrying the same model with the same input will not help."""

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class ModelNotFound(PermanentError):
    """The model cannot be found or loaded here."""


class Unauthorised(PermanentError):
    """Credentials were refused."""


class ModelGated(Unauthorised):
    """The Hub holds the model behind an access request this token has not been granted."""


class HubUnavailable(RouterError):
    """The Hub cannot be asked: offline mode is on, or its endpoint does not answer."""


class RemoteRejected(PermanentError):
    """The remote endpoint refused the request as malformed; retrying or another model will not help."""


class ModelFailed(PermanentError):
    """The model raised while running this input."""


class TransientError(RouterError):
    """The same call may succeed later. ``retry_after_s`` is the server's hint, when it gave one."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, http_status: int | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.http_status = http_status


class ModelLoading(TransientError):
    pass


class RateLimited(TransientError):
    pass


class ServerError(TransientError):
    pass


class NetworkError(TransientError):
    pass


class JobError(RouterError):
    """A job ended in a state other than ``succeeded``."""

    def __init__(self, job_id: str, status: str, error: str | None):
        super().__init__(f"job {job_id} {status}: {error}" if error else f"job {job_id} {status}")
        self.job_id = job_id
        self.status = status
        self.error = error


class JobFailed(JobError):
    pass


class JobRejected(JobError):
    pass


class JobCancelled(JobError):
    pass


class JobExpired(JobError):
    pass


class JobTimeout(JobError, TimeoutError):
    pass


class StreamRestarted(RouterError):
    """A retry of the job made a text that differs from the deltas already read (a sampled generation cut
    off and run again): the deltas read so far are void; ``job.stream()`` again reads the new text whole."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id}: a retry made another text; read the stream again")
        self.job_id = job_id
