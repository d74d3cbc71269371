"""The valid API keys, found by the SHA-256 digest of the key a request sends.

One hash and one dictionary lookup a request, however many keys are configured: comparing the key
sent with each configured key in turn (in constant time, so timing told nothing) cost every request
about 0.23 ms of the API's CPU with 1,000 keys, more than a status read itself. A lookup by digest
tells a caller no more: its time depends on the digest of what was sent, and finding a digest
the table holds takes a preimage of SHA-256, not a key guessed a byte at a time.
"""

from __future__ import annotations

import hashlib

import attrs


def _digest(key: str) -> bytes:
    # A header that is not UTF-8 arrives with its bytes escaped as surrogates; they are hashed as bytes.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@attrs.frozen
class KeyTable:
    """Every valid key (by its digest) with the projects it may use: None for every project."""

    _by_digest: dict[bytes, frozenset[str] | None] = attrs.field(alias="by_digest")

    @classmethod
    def of(cls, keys: list[str], scoped: dict[str, frozenset[str]] | None = None) -> KeyTable:
        """The table of `keys`, those of `scoped` limited to its projects; an empty key is never valid."""
        scoped = scoped or {}
        return cls({_digest(key): scoped.get(key) for key in keys if key})

    def find(self, given: str) -> tuple[bool, frozenset[str] | None]:
        """Whether `given` is a valid key, and the projects it may use (None: every project)."""
        if not given:
            return False, None
        digest = _digest(given)
        return digest in self._by_digest, self._by_digest.get(digest)
