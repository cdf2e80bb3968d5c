"""Prefect flows over topozarr_core.

Importing the package makes an ephemeral Prefect server started by this process (ad hoc runs, the
demo, tests) keep concurrency leases on disk instead of in memory, as infra/prefect-server.sh does:
a killed run's slots can then be given back by its retry (see flows/slots.py). A server started
elsewhere is not affected.
"""

import os

# the same value as flows.slots.LEASES_ON_DISK (not imported: that would import prefect here)
os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
