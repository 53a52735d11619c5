"""Per-benchmark passwords derived from the operator's own key (pure).

Why derived and not read back: the operator then never needs to *read* the Secrets it creates in the
namespaces it serves. It only creates each benchmark's Secret (for the pods' secretKeyRef) and can
always compute the same password again, after a restart too, from its key and the benchmark's UID.
The key itself is random, kept in one Secret in the operator's namespace. The only other Secrets it
may read are the user's monitor logins of a benchmark of their own app, by name (RBAC resourceNames).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

KEY_SECRET_NAME = "poolbench-operator-key"
KEY_FIELD = "key"


def derive_password(key: bytes, uid: str, purpose: str) -> str:
    """32 URL-safe characters, unique per (benchmark UID, purpose), unguessable without the key."""
    digest = hmac.new(key, f"{uid}:{purpose}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]
