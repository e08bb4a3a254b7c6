"""The job submitter against real PostgreSQL: batches, and what happens when the broker is down."""

from __future__ import annotations

import uuid

import pytest
import redis

from services.api.errors import DependencyDown, NotFound
from services.api.schemas import InputRef, JobSpec
from services.api.submitter import JobSubmitter, Submission, Unresolved
from shared.config.settings import CommonSettings
from shared.db.engine import session_scope
from shared.db.models import Job, Tenant
from shared.media import StoredMedia
from shared.queue import create_celery
from tests.support.services import free_port

IMAGE = StoredMedia("tenants/sub/media/abc", "image/png", 10, "abc", 4, 4)


@pytest.fixture
def tenant(database_url):
    """A tenant of this test alone, so other tests' jobs never mix into its assertions."""
    tenant_id = f"sub-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        session.add(Tenant(id=tenant_id))
    return tenant_id


@pytest.fixture
def broker_url(redis_server):
    """A Redis database no worker consumes, so submitted jobs stay queued for inspection."""
    url = redis_server.url.rsplit("/", 1)[0] + "/1"  # the session's own Redis, another database
    redis.Redis.from_url(url).flushdb()
    return url


def submitter_for(database_url, broker_url):
    celery = create_celery(CommonSettings(broker_url=broker_url))
    return JobSubmitter(database_url=database_url, celery=celery)


def test_many_jobs_submitted_at_once_are_all_written_and_enqueued(database_url, broker_url, tenant):
    submitter = submitter_for(database_url, broker_url)
    try:
        futures = [submitter.submit(Submission(tenant, JobSpec(task="caption"), "m", media=[IMAGE])) for _ in range(20)]
        rows = [future.result(timeout=30) for future in futures]
    finally:
        submitter.close()
    assert len({row["id"] for row in rows}) == 20
    with session_scope(database_url) as session:
        assert all(session.get(Job, row["id"]).status == "queued" for row in rows)


def test_refs_to_unknown_objects_come_back_unresolved_and_foreign_ones_are_404(database_url, broker_url, tenant):
    submitter = submitter_for(database_url, broker_url)
    try:
        unknown = submitter.submit(
            Submission(tenant, JobSpec(task="caption"), "m", refs=[InputRef(object_key=f"tenants/{tenant}/never-seen")])
        ).result(timeout=30)
        foreign = submitter.submit(
            Submission(tenant, JobSpec(task="caption"), "m", refs=[InputRef(object_key="tenants/other/x")])
        )
        with pytest.raises(NotFound):
            foreign.result(timeout=30)
    finally:
        submitter.close()
    assert isinstance(unknown, Unresolved) and unknown.keys == [f"tenants/{tenant}/never-seen"] and unknown.media == [None]


def test_a_broker_that_is_down_fails_the_job_visibly(database_url, tenant):
    # given a broker address nothing listens on
    submitter = submitter_for(database_url, f"redis://127.0.0.1:{free_port()}/0")
    try:
        # when a job is submitted
        future = submitter.submit(Submission(tenant, JobSpec(task="caption"), "m", media=[IMAGE]))

        # then the caller gets a 503-class error and the job row says why it will never run
        with pytest.raises(DependencyDown):
            future.result(timeout=60)
    finally:
        submitter.close()
    with session_scope(database_url) as session:
        failed = session.query(Job).filter(Job.tenant_id == tenant, Job.status == "failed").all()
    assert failed and all(job.error["code"] == "queue_unavailable" for job in failed)
