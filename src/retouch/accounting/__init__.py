"""API keys, usage ledger, rate limits and quotas."""
