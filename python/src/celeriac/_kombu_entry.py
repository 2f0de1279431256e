"""Makes ``celeriac+postgresql://`` broker URLs work without an import in the Celery app.

kombu has no entry-point group for transports, but it loads the ``kombu.serializers`` group
whenever ``kombu.serialization`` is imported, which Celery does before it opens a broker
connection. celeriac's entry point there (named ``json``) loads this module, which registers the
``celeriac`` transport alias. The serializer registration that kombu then performs is
``register("json", None, None, "application/json", "utf-8")``: with no encoder and no decoder it
only restates the name/content-type pair kombu's own JSON serializer already has, so it changes
nothing.

This module must never fail: an exception here would break ``import kombu`` for every program
in the environment.
"""

from __future__ import annotations

try:
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault("celeriac", "celeriac.transport:Transport")
except Exception:  # pragma: no cover - kombu missing or changed; `import celeriac` still works
    pass

#: ``(encoder, decoder, content_type, content_encoding)`` for kombu's ``register``.
SERIALIZER = (None, None, "application/json", "utf-8")
