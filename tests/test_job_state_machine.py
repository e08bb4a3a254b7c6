"""The job state machine on PostgreSQL: guarded compare-and-set transitions."""

from __future__ import annotations

import pytest

from shared.db.engine import session_scope
from shared.db.models import Job, JobResult, Tenant
from shared.ids import new_id
from shared.jobs import JobStatus, StaleTransition, fail_job, finish_job, start_job


@pytest.fixture
def queued_job(database_url):
    job_id = new_id("job")
    with session_scope(database_url) as session:
        if session.get(Tenant, "state-tests") is None:
            session.add(Tenant(id="state-tests"))
            session.flush()
        session.add(
            Job(id=job_id, tenant_id="state-tests", status="queued", task="caption", model="m", options={},
                metadata_={}, input={"items": []}, attempts=0)
        )
    return job_id


def status_of(database_url, job_id):
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        return job.status, job.attempts


def test_a_job_runs_and_succeeds_once(database_url, queued_job):
    with session_scope(database_url) as session:
        attempt = start_job(session, queued_job, seen_attempts=0)
    with session_scope(database_url) as session:
        finish_job(session, queued_job, attempt=attempt, result={"text": "x"})
    assert status_of(database_url, queued_job) == ("succeeded", 1)
    with session_scope(database_url) as session:
        assert session.get(JobResult, queued_job).result == {"text": "x"}


def test_two_workers_cannot_both_start_a_job(database_url, queued_job):
    with session_scope(database_url) as session:
        start_job(session, queued_job, seen_attempts=0)
    with pytest.raises(StaleTransition), session_scope(database_url) as session:
        start_job(session, queued_job, seen_attempts=0)


def test_a_stale_attempt_cannot_write_a_result(database_url, queued_job):
    with session_scope(database_url) as session:
        start_job(session, queued_job, seen_attempts=0)
    with pytest.raises(StaleTransition), session_scope(database_url) as session:
        finish_job(session, queued_job, attempt=2, result={"text": "stale"})
    assert status_of(database_url, queued_job) == ("running", 1)


def test_terminal_states_are_final(database_url, queued_job):
    with session_scope(database_url) as session:
        fail_job(session, queued_job, from_status=JobStatus.queued, attempt=0, code="x", message="y")
    with pytest.raises(StaleTransition), session_scope(database_url) as session:
        start_job(session, queued_job, seen_attempts=0)
    with pytest.raises(StaleTransition), session_scope(database_url) as session:
        fail_job(session, queued_job, from_status=JobStatus.failed, attempt=None, code="x", message="y")
    assert status_of(database_url, queued_job) == ("failed", 0)
    assert all(status.is_terminal() for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled))
    assert not JobStatus.running.is_terminal()
