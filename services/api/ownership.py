"""Every resource belongs to the tenant of the key that created it: another tenant gets 404 for it,
never 403 (API.md), so that ids reveal nothing across tenants."""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from services.api.errors import NotFound


class _Owned(Protocol):
    tenant_id: str


Row = TypeVar("Row", bound=_Owned)


def owned_or_404(session: Session, model: type[Row], row_id: str, tenant_id: str, *, message: str, code: str) -> Row:
    row = session.get(model, row_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(message, code=code)
    return row
