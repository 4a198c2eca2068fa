"""Entry point for waitress: ``waitress-serve --listen=127.0.0.1:8080 wsgi:app``."""

from tim_audit import create_app

app = create_app()
