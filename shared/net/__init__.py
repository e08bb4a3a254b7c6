"""Server-side outbound HTTP: the one guarded, address-pinned way to reach a URL a tenant gave us."""

from shared.net.outbound import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    MAX_REDIRECTS,
    OutboundRefused,
    RefusalReason,
    ResolvedTarget,
    check_url,
    check_url_form,
    iter_body,
    send,
    stream,
    why_forbidden,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT_S",
    "MAX_REDIRECTS",
    "OutboundRefused",
    "RefusalReason",
    "ResolvedTarget",
    "check_url",
    "check_url_form",
    "iter_body",
    "send",
    "stream",
    "why_forbidden",
]
