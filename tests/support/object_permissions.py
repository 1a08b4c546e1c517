"""An authentication backend with object permissions only, as django-guardian and
django-rules answer them: ``user.has_perm(perm, obj)``, never ``user.has_perm(perm)``."""

from __future__ import annotations

from typing import Any

#: (user pk, permission, object pk) triples the backend grants.
GRANTED: set[tuple[Any, str, Any]] = set()

PATH = "tests.support.object_permissions.ObjectPermissionBackend"


class ObjectPermissionBackend:
    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> None:
        return None

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        return obj is not None and (user_obj.pk, perm, obj.pk) in GRANTED
