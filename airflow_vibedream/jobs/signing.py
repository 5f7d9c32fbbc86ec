"""Records that decide what a task adopts or reuses carry a MAC, so that whoever may write them
but not read the deployment's secrets cannot make a task adopt another image's job.

Who can write them: Airflow's REST API lets a UI "user" account write a task's ``task_state_store``
(where a try records its job for the next try), and whoever can write into ``output_path`` can
write the ledger's documents (``_vibedream_ledger/``). Either could name another image's job or
outputs. So every such record is signed when written and checked when read: a record whose MAC
does not verify is treated as absent (never as a reason to adopt, reuse or wait), and said once in
the log by name, never by content.

The key: HMAC-SHA256 under a key derived from ``[vibedream] record_secret`` when the deployment
sets it, else from the connection's API key (which the writers above cannot read: Airflow never
shows a connection's password). Rotating the API key without ``record_secret`` makes older records
unauthenticated: a retry after the rotation cannot reconnect (it submits anew) and the ledger's
earlier images are paid once more. Set ``record_secret`` (and keep it) to rotate API keys freely;
see ``docs/ledger.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

#: The field of a signed document that holds its MAC.
MAC_FIELD = "mac"
#: What the derived key is for: another use of the same secret never gives the same key.
_PURPOSE = b"airflow-provider-vibedream/records/v1"


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a MAC is computed over: the document without its MAC, keys sorted, no spaces."""
    body = {key: value for key, value in document.items() if key != MAC_FIELD}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class RecordSigner:
    """Signs and checks the records of one deployment (one secret).

    :param secret: the deployment's ``record_secret``, or the API key.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a record signer needs a secret")
        self._key = hmac.new(_PURPOSE, secret.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:  # never the key, not even derived
        return "RecordSigner(<secret>)"

    def mac(self, document: Mapping[str, Any]) -> str:
        return hmac.new(self._key, canonical(document), hashlib.sha256).hexdigest()

    def signed(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """``document`` with its MAC."""
        body = {key: value for key, value in document.items() if key != MAC_FIELD}
        return {**body, MAC_FIELD: self.mac(body)}

    def verified(self, document: Any) -> dict[str, Any] | None:
        """``document`` without its MAC when the MAC is right; None for anything else (no MAC, a wrong
        one, not a JSON object)."""
        if not isinstance(document, Mapping):
            return None
        given = document.get(MAC_FIELD)
        if not isinstance(given, str):
            return None
        try:
            expected = self.mac(document)
        except (TypeError, ValueError):  # not JSON-serialisable: nobody signed it
            return None
        if not hmac.compare_digest(given, expected):
            return None
        return {key: value for key, value in document.items() if key != MAC_FIELD}


def record_secret(api_key: str) -> str:
    """The secret records are signed with: ``[vibedream] record_secret`` if set, else the API key."""
    from airflow.providers.common.compat.sdk import conf

    configured = conf.get("vibedream", "record_secret", fallback="") or ""
    return configured or api_key


def signer_for(api_key: str) -> RecordSigner:
    """The deployment's signer, for a task whose connection has ``api_key``."""
    return RecordSigner(record_secret(api_key))
