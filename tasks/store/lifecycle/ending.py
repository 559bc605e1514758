"""Attempts and jobs ending: answers recorded (many at once, each with its attempt closed and its usage row),
attempts that failed, and jobs ended failed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, bindparam, select, text, tuple_, update

from llm_router.tasks.database import json_text
from llm_router.tasks.records import FINAL_STATUSES, AttemptStatus, JobRecord, JobStatus
from llm_router.tasks.redaction import redact
from llm_router.tasks.storable import storable_text
from llm_router.tasks.store.base import ATTEMPTS, USAGE, StoreBase, elapsed_ms, insert_ignoring_duplicates, usage_row
from llm_router.tasks.store.lifecycle.guards import (
    CANCELLED_BY_CALLER,
    FINAL_SQL,
    LOST_ATTEMPT,
    NOT_FINAL,
    close_lost_attempts,
)
from llm_router.tasks.store.lifecycle.shapes import AttemptFailure, Success

# ``succeed`` as one PostgreSQL statement for any number of jobs, on the database's clock read once: each job
# ends with its answer unless it already ended, and only then is its attempt closed (and any other left open,
# as lost) and its usage row written (one per job: a redelivered answer adds none).
_SUCCEED = text(
    f"""
    WITH clock AS (
        SELECT clock_timestamp() AS now
    ), given AS (
        SELECT * FROM unnest(
            CAST(:ids AS text[]), CAST(:numbers AS int[]), CAST(:statuses AS text[]), CAST(:models AS text[]),
            CAST(:results AS jsonb[]), CAST(:errors AS text[]), CAST(:model_ms AS float8[]), CAST(:providers AS text[]),
            CAST(:prompt AS int[]), CAST(:completion AS int[]), CAST(:total AS int[]), CAST(:cached AS bool[])
        ) AS given(id, number, status, model, result, error, model_ms, provider, prompt, completion, total, cached)
    ), done AS (
        UPDATE jobs SET status = given.status, model_used = given.model, result = given.result, error = given.error,
            finished_at = clock.now, latency_ms = extract(epoch FROM clock.now - jobs.created_at) * 1000.0
        FROM given, clock
        WHERE jobs.id = given.id AND jobs.status NOT IN ({FINAL_SQL})
        RETURNING jobs.id, jobs.kind, jobs.tier, jobs.tenant, jobs.latency_ms, jobs.finished_at
    ), closed AS (
        UPDATE attempts SET status = given.status, finished_at = clock.now, latency_ms = given.model_ms,
            prompt_tokens = given.prompt, completion_tokens = given.completion, total_tokens = given.total
        FROM given, clock
        WHERE attempts.job_id = given.id AND attempts.number = given.number AND given.id IN (SELECT id FROM done)
    ), others AS (
        UPDATE attempts SET status = '{AttemptStatus.LOST}', error = :lost_error, finished_at = clock.now
        FROM clock
        WHERE attempts.job_id IN (SELECT id FROM done) AND attempts.status = '{AttemptStatus.RUNNING}'
            AND (attempts.job_id, attempts.number) NOT IN (SELECT id, number FROM given)
    )
    INSERT INTO usage (job_id, kind, tier, model, provider, prompt_tokens, completion_tokens, total_tokens, cached,
                       latency_ms, created_at, tenant)
    SELECT done.id, done.kind, done.tier, given.model, given.provider, given.prompt, given.completion, given.total,
        given.cached, done.latency_ms, done.finished_at, done.tenant
    FROM done JOIN given ON given.id = done.id
    ON CONFLICT (job_id) DO NOTHING
    """
).bindparams(bindparam("lost_error", LOST_ATTEMPT))


def _error_of(success: Success) -> str | None:
    return CANCELLED_BY_CALLER if success.cancelled else None


class Ending(StoreBase):
    def succeed(self, answers: list[Success]) -> None:
        """Record each started job's answer, close its attempt (and any other left open) and write its usage
        row, unless the job already ended; all in one statement on PostgreSQL, one transaction elsewhere."""
        if not answers:
            return
        if self.one_statement_writes:
            self._succeed_in_one_statement(answers)
        else:
            self._succeed_in_transaction(answers)

    def _succeed_in_one_statement(self, answers: list[Success]) -> None:
        usages = [answer.result.usage for answer in answers]
        parameters = {
            "ids": [answer.job_id for answer in answers],
            "numbers": [answer.number for answer in answers],
            "statuses": [str(answer.job_status) for answer in answers],  # the attempt's is the same word
            "models": [storable_text(answer.result.model) for answer in answers],
            "results": [json_text(answer.result.model_dump(mode="json")) for answer in answers],
            "errors": [_error_of(answer) for answer in answers],
            "model_ms": [answer.model_latency_ms for answer in answers],
            "providers": [answer.provider for answer in answers],
            "prompt": [usage.prompt_tokens for usage in usages],
            "completion": [usage.completion_tokens for usage in usages],
            "total": [usage.total_tokens for usage in usages],
            "cached": [answer.result.cached for answer in answers],
        }
        with self.autocommit.connect() as connection:
            connection.execute(_SUCCEED, parameters)

    def _succeed_in_transaction(self, answers: list[Success]) -> None:
        by_id = {answer.job_id: answer for answer in answers}
        with self.sessions.begin() as session:
            now = self.clock.read(session.connection())
            records = session.scalars(
                select(JobRecord).where(JobRecord.id.in_(list(by_id))).order_by(JobRecord.id).with_for_update()
            ).all()
            ended = [record for record in records if record.status not in FINAL_STATUSES]
            usage_rows: list[dict[str, Any]] = []
            for record in ended:
                answer = by_id[record.id]
                record.status, record.model_used = answer.job_status, answer.result.model
                record.result, record.error = answer.result.model_dump(mode="json"), _error_of(answer)
                record.finished_at, record.latency_ms = now, elapsed_ms(record.created_at, now)
                usage = answer.result.usage
                session.execute(
                    update(ATTEMPTS)
                    .where(ATTEMPTS.c.job_id == record.id, ATTEMPTS.c.number == answer.number)
                    .values(
                        status=answer.attempt_status,
                        finished_at=now,
                        latency_ms=answer.model_latency_ms,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        total_tokens=usage.total_tokens,
                    )
                )
                usage_rows.append(
                    usage_row(
                        job_id=record.id,
                        kind=record.kind,
                        tier=record.tier,
                        model=answer.result.model,
                        provider=answer.provider,
                        usage=usage,
                        cached=answer.result.cached,
                        latency_ms=record.latency_ms,
                        now=now,
                        tenant=record.tenant,
                    )
                )
            if ended:
                closed = [(record.id, by_id[record.id].number) for record in ended]
                others = ATTEMPTS.c.job_id.in_([job_id for job_id, _ in closed]) & tuple_(
                    ATTEMPTS.c.job_id, ATTEMPTS.c.number
                ).not_in(closed)
                session.execute(close_lost_attempts(others, now))
                session.execute(insert_ignoring_duplicates(session, USAGE, "job_id"), usage_rows)

    def fail_attempts(self, failures: list[AttemptFailure]) -> None:
        """Close attempts that failed (the policy decides what follows: a retry, the next model, or the job's
        end), in one statement."""
        if not failures:
            return
        with self.sessions.begin() as session:
            session.connection().execute(
                update(ATTEMPTS)
                .where(
                    ATTEMPTS.c.job_id == bindparam("b_job"),
                    ATTEMPTS.c.number == bindparam("b_number"),
                    ATTEMPTS.c.status == AttemptStatus.RUNNING,  # one closed as lost stays lost
                )
                .values(
                    status=AttemptStatus.FAILED,
                    error=bindparam("b_error"),
                    http_status=bindparam("b_http"),
                    delay_s=bindparam("b_delay"),
                    latency_ms=bindparam("b_latency"),
                    finished_at=self.clock.now(),
                ),
                [
                    {
                        "b_job": failure.job_id,
                        "b_number": failure.number,
                        "b_error": redact(failure.error),
                        "b_http": failure.http_status,
                        "b_delay": failure.delay_s,
                        "b_latency": failure.latency_ms,
                    }
                    for failure in failures
                ],
            )

    def fail(self, job_ids: list[str], error: str, *, not_leased_by_others: str | None = None) -> list[str]:
        """End failed, with ``error``, those of ``job_ids`` not yet final, each attempt left open closed as lost;
        with ``not_leased_by_others`` (an owner), a job another owner is running is left to it. The ids ended."""
        error = redact(error)
        with self.sessions.begin() as session:
            now = self.clock.read(session.connection())
            which: list[ColumnElement[bool]] = [JobRecord.id.in_(job_ids), NOT_FINAL]
            if not_leased_by_others is not None:
                which.append(
                    (JobRecord.status != JobStatus.RUNNING)
                    | (JobRecord.lease_owner.is_(None))
                    | (JobRecord.lease_owner == not_leased_by_others)
                )
            records = session.scalars(select(JobRecord).where(*which).order_by(JobRecord.id).with_for_update()).all()
            for record in records:
                record.status, record.error, record.finished_at = JobStatus.FAILED, error, now
                record.latency_ms = elapsed_ms(record.created_at, now)
            ended = [record.id for record in records]
            if ended:
                session.execute(close_lost_attempts(ATTEMPTS.c.job_id.in_(ended), now))
            return ended
