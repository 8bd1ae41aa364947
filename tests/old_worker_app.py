"""A worker as flowers ran before heartbeats, for the mixed-cluster test: today's app without
the `Heartbeat` bootstep (`celery -A tests.old_worker_app worker`), so it writes no record and
lists none of the tasks it holds."""

from flowers.worker.app import Heartbeat, app

app.steps["worker"].discard(Heartbeat)

__all__ = ["app"]
