"""WSGI entry point: `gunicorn -c deploy/gunicorn.conf.py service.wsgi:app`."""

from . import create_app
from .store import log_backend

app = create_app()
# Imported once by each server process (gunicorn loads the app in every worker): one line each.
log_backend(app)
