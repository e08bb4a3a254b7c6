"""schemathesis against the live OpenAPI schema, real services behind it: no 5xx, no response that
breaks the schema. A size that fits CI; `SCHEMATHESIS_EXAMPLES=300 make test` for a longer run."""

from __future__ import annotations

import os
import warnings

import pytest
import schemathesis
from hypothesis.errors import NonInteractiveExampleWarning
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import VideoIndex
from shared.indexes.progress import cancel_index
from tests.conftest import TENANT_KEYS

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def cancel_fuzzed_indexes(database_url):
    """Generated indexes name thousands of made-up video URLs: cancel them afterwards so the frames
    worker does not spend the rest of the session on them."""
    yield
    with session_scope(database_url) as session:
        for index_id in session.scalars(select(VideoIndex.id).where(VideoIndex.status.in_(("queued", "running")))):
            cancel_index(session, index_id)


def test_no_operation_answers_5xx_or_breaks_its_schema(stack, cancel_fuzzed_indexes):
    # given every operation of the live schema and requests generated from it, from a real tenant
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()
        for _ in range(EXAMPLES):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NonInteractiveExampleWarning)
                case = strategy.example()
            # when each is sent
            response = case.call(headers=headers, timeout=60)
            calls += 1
            # then the API never fails internally and every answer matches the documented schema
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as error:  # collect every operation's failures, then report them all
                failures.append(f"{operation.label}: {type(error).__name__}: {str(error)[:300]}")
    assert calls >= EXAMPLES * 10
    assert not failures, "\n".join(failures[:10])
