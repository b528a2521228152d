"""Alembic revisions of our tables; run by :mod:`poller.migrate`, never by hand-made config."""
