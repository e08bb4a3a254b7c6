"""The job state machine on PostgreSQL: guarded compare-and-set transitions."""

from __future__ import annotations

import time

import pytest

from shared.db.engine import session_scope
from shared.db.models import Job, JobResult, Tenant
from shared.ids import new_id
from shared.jobs import (
    JobStatus,
    StaleTransition,
    cancel_job,
    fail_job,
    finish_job,
    renew_lease,
    requeue_expired_leases,
    start_job,
)


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


def test_a_lapsed_lease_requeues_the_job_and_rejects_the_stale_attempts_result(database_url, queued_job):
    # given a job whose worker started it and then went silent past its lease
    with session_scope(database_url) as session:
        stale_attempt = start_job(session, queued_job, seen_attempts=0, lease_s=0.01)
    time.sleep(0.05)

    # when a reaper runs (twice, as racing reapers would)
    with session_scope(database_url) as session:
        first = requeue_expired_leases(session)
    with session_scope(database_url) as session:
        second = requeue_expired_leases(session)

    # then the job is queued again exactly once, and the stale attempt can neither renew nor finish
    assert queued_job in first and queued_job not in second
    assert status_of(database_url, queued_job) == ("queued", 1)
    with session_scope(database_url) as session:
        assert renew_lease(session, queued_job, attempt=stale_attempt, lease_s=30) is False
    with session_scope(database_url) as session, pytest.raises(StaleTransition):
        finish_job(session, queued_job, attempt=stale_attempt, result={"text": "late"})
    # and the next attempt runs normally
    with session_scope(database_url) as session:
        attempt = start_job(session, queued_job, seen_attempts=1)
    with session_scope(database_url) as session:
        finish_job(session, queued_job, attempt=attempt, result={"text": "x"})
    assert status_of(database_url, queued_job) == ("succeeded", 2)


def test_a_healthy_lease_is_renewed_and_not_reaped(database_url, queued_job):
    with session_scope(database_url) as session:
        attempt = start_job(session, queued_job, seen_attempts=0, lease_s=30)
    with session_scope(database_url) as session:
        assert renew_lease(session, queued_job, attempt=attempt, lease_s=30) is True
    with session_scope(database_url) as session:
        assert queued_job not in requeue_expired_leases(session)


def test_cancel_ends_queued_and_running_jobs_and_refuses_finished_ones(database_url, queued_job):
    # given a running job
    with session_scope(database_url) as session:
        attempt = start_job(session, queued_job, seen_attempts=0)
    # when it is canceled
    with session_scope(database_url) as session:
        assert cancel_job(session, queued_job) is JobStatus.running
    # then its attempt loses the lease, cannot write a result, and a second cancel is refused
    assert status_of(database_url, queued_job) == ("canceled", 1)
    with session_scope(database_url) as session:
        assert renew_lease(session, queued_job, attempt=attempt, lease_s=30) is False
    with session_scope(database_url) as session, pytest.raises(StaleTransition):
        finish_job(session, queued_job, attempt=attempt, result={"text": "late"})
    with session_scope(database_url) as session, pytest.raises(StaleTransition):
        cancel_job(session, queued_job)
