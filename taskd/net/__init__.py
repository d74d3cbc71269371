"""Outbound requests on a caller's behalf: the SSRF guard (guard) and the client that applies it (guarded)."""
