"""WSGI entry point: `gunicorn -c deploy/gunicorn.conf.py service.wsgi:app`."""

from . import create_app

app = create_app()
