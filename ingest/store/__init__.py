"""Everything ingest says to PostgreSQL/TimescaleDB: the only place in `ingest` importing psycopg.

- writes: the batch transaction (fixes, events, rejects, then alerts from the rules)
- world: zones, subjects, devices and victims for the rules engine; change notifications
- admin: migrations, throwaway databases, benchmark baselines
"""

from ingest.store.admin import (
                                copy_baseline,
                                count_fixes,
                                create_database,
                                drop_database,
                                migrate,
                                migration_files,
                                register_devices,
)
from ingest.store.writes import DataRejected, IngestStore, Registered, TransientError, WriteResult

__all__ = ["DataRejected", "IngestStore", "Registered", "TransientError", "WriteResult",
           "copy_baseline", "count_fixes", "create_database", "drop_database", "migrate",
           "migration_files", "register_devices"]
