"""WSGI entry points, for waitress or any WSGI server:

- ``wsgi:ingest``: ``POST /callback`` and ``/healthz``, for Tencent (public);
- ``wsgi:review``: the reviewers' dashboard (internal only);
- ``wsgi:app``: both in one, with one thread pool, for development.

``tim-audit serve`` runs ingest and review on separate listeners and is the
way to serve them in production. Each application is made when first asked
for, so serving ``wsgi:review`` never opens the writer.
"""

import tim_audit

_FACTORIES = {
    "app": lambda: tim_audit.open_log(tim_audit.create_app()),
    "ingest": lambda: tim_audit.open_log(tim_audit.create_ingest_app()),
    "review": tim_audit.create_review_app,
}


def __getattr__(name):
    if name not in _FACTORIES:
        raise AttributeError(f"module 'wsgi' has no attribute {name!r}")
    app = globals()[name] = _FACTORIES[name]()
    return app
