"""Webhooks: the terminal event of a task POSTed to its `callback_url` from a durable Redis outbox.

payload (what is sent) · signing (Standard Webhooks headers) · guard (SSRF rules) ·
schedule (when attempts happen) · outbox (the Redis state) · sender (the loop that delivers).
"""
