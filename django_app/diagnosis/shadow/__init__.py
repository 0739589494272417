"""Shadow mode: a pending challenger answers every live request in the background (web, API, PACS);
its answers are stored for staff (/staff/shadow/) and never shown to doctors. `runner`: the queue
and the worker; `figures`: what the answers show, and `evidence` for the promotion decision."""
from .figures import evidence  # noqa: F401 - the DAG's entry point (diagnosis.shadow.evidence)
