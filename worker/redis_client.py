"""Clients of the job store's Redis that ride out a restart or a short outage, and say so."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from flowers.worker.settings import redact_url

log = logging.getLogger(__name__)

# How long one call to Redis is retried before its error is raised: a restart or a short
# outage is ridden out, a Redis gone for longer is reported.
PATIENCE_SECONDS = 120


class AnnouncedRetry(Retry):
    """Retries as `Retry` does, for `patience` seconds of one call at most (the try under way
    when they run out ends first: up to the client's socket timeout more), and says so: a
    warning when Redis first fails to answer, and another when it answers again or when the
    call gives up, so a wait on a lost Redis is never silent. A Redis that takes connections
    and never answers (stopped, or its host stalled) costs a socket timeout a try, so the
    limit is on time, not on the number of tries."""

    def __init__(self, where: str, patience: float, backoff: Any) -> None:
        super().__init__(backoff, -1)  # no limit on tries: `patience` ends them
        self.where = where
        self.patience = patience
        self.lost = False

    def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        failures: list[Exception] = []  # this call's: a call nested in it (a reconnection)
        # that goes through while Redis still does not answer says nothing

        def failed(error: Exception, *count: int) -> Any:
            failures.append(error)
            if not self.lost:
                self.lost = True
                log.warning("cannot reach Redis at %s (%s); retrying for up to %d s",
                            self.where, error, self.patience)
            fail(error, *count)
            if (waited := time.monotonic() - started) >= self.patience:
                self.lost = False
                log.warning("Redis at %s has not answered for %d s: giving up", self.where,
                            waited)
                raise error

        result = super().call_with_retry(do, failed, *args, **kwargs)
        if failures and self.lost:
            self.lost = False
            log.warning("Redis at %s answers again", self.where)
        return result


def patient_client(url: str, patience: float = PATIENCE_SECONDS,
                   socket_timeout: float = 30) -> redis.Redis:
    """A Redis client that rides out a restart: one call retries for `patience` seconds (plus
    up to one `socket_timeout`), saying so."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=3, socket_timeout=socket_timeout,
        retry=AnnouncedRetry(redact_url(url), patience, ExponentialBackoff(cap=5.0, base=0.25)),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
