"""Alembic environment: always run on a connection handed over by the caller."""

from alembic import context

from randomizer.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through randomizer.migrations.upgrade(connection) "
        "(sealroom init-demo does), not through the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
