"""PostgreSQL: asyncpg bridged to trio, the embedded cluster, migrations.

``migrate`` is imported from ``relay.db.migrate`` (not re-exported here, where
the function would hide the module of the same name).
"""

from relay.db.bridge import MISSED, UNAVAILABLE_ERRORS, Database, mask_dsn, wait_until_available
from relay.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from relay.db.migrate import MigrationError

__all__ = [
    "MISSED",
    "UNAVAILABLE_ERRORS",
    "Database",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "MigrationError",
    "mask_dsn",
    "wait_until_available",
]
