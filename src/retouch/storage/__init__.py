"""Blob storage for ``response_format=url`` and the signatures that guard its links."""
