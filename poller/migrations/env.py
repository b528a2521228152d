"""Alembic's environment: runs on the connection :mod:`poller.migrate` passes in.

No ``fileConfig`` here: the service's logging stays as it was set up (alembic's default template
would replace it and disable every logger already made). No URL is read or logged: there is none.
"""

from __future__ import annotations

from alembic import context

from poller.migrate import include_name, include_object
from poller.models import Base


def run() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported: run them on a database")
    context.configure(
        connection=context.config.attributes["connection"],
        target_metadata=Base.metadata,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
