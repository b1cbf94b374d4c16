"""Outbound HTTP: the SSRF-safe fetcher used for ``image_url`` inputs and mirrored links."""

from retouch.net.fetch import (
    ByteBudget,
    Fetched,
    Fetcher,
    FetchFailed,
    FetchPolicy,
    is_public_address,
)

__all__ = ["ByteBudget", "FetchFailed", "FetchPolicy", "Fetched", "Fetcher", "is_public_address"]
