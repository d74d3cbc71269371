"""Webhooks: the terminal event of a task POSTed to its `callback_url` from a durable Redis outbox.

payload (what is sent) · signing (Standard Webhooks headers) · schedule (when attempts happen) ·
outbox (the Redis state) · sender (the loop that delivers, through the SSRF guard of `taskd.net`).
"""
