"""Clients of the job store's Redis that ride out a restart or a short outage, and say so; the
same patience for the tasks sent through kombu (`sending_retry`), and how to tell a lost Redis
from other Redis errors (`redis_error`, `lost_redis`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from flowers.worker.settings import redact_url

log = logging.getLogger(__name__)

# How long one call to Redis is retried before its error is raised: a restart or a short
# outage is ridden out, a Redis gone for longer is reported.
PATIENCE_SECONDS = 120
RETRIED_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
LOST = tuple(kind.__name__ for kind in RETRIED_ERRORS)  # their names, for `redis_error`
# Kinds of ConnectionError that no wait mends: Redis answered, and refused.
REFUSED = ("AuthenticationError", "AuthorizationError")


class AnnouncedRetry(Retry):
    """Retries as `Retry` does, for `patience` seconds of one call at most, and says so: a
    warning when Redis first fails to answer, and another when it answers again or when the
    call gives up, so a wait on a lost Redis is never silent. A Redis that takes connections
    and never answers (stopped, or its host stalled) costs a socket timeout a try, so the
    limit is on time, not on the number of tries. The reconnection a failed call makes runs
    a call of its own inside it (redis-py's): that one keeps the outer call's deadline. The
    try under way when the patience runs out ends first, so a call may last one try (a
    socket timeout, or a connection timeout and a backoff) longer. Errors of
    `supported_errors` are retried; of those, one that `is_retryable` rejects is raised at
    once, and nothing is said of it."""

    def __init__(self, where: str, patience: float, backoff: Any,
                 supported_errors: tuple[type[Exception], ...] = RETRIED_ERRORS,
                 is_retryable: Callable[[Exception], bool] | None = None) -> None:
        super().__init__(backoff, -1, supported_errors)  # no limit on tries: `patience` ends them
        self.retryable = is_retryable
        self.where = where
        self.patience = patience
        self.lost = False
        self.deadline: float | None = None  # the outermost call's, while one runs

    def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        outermost = self.deadline is None
        if outermost:
            self.deadline = time.monotonic() + self.patience
        deadline = self.deadline
        assert deadline is not None
        failures: list[Exception] = []  # this call's: a call nested in it (a reconnection)
        # that goes through while Redis still does not answer says nothing

        def failed(error: Exception, *count: int) -> Any:
            if self.retryable is not None and not self.retryable(error):
                fail(error, *count)
                raise error
            failures.append(error)
            if not self.lost:
                self.lost = True
                log.warning("cannot reach Redis at %s (%s); retrying for up to %d s",
                            self.where, error, self.patience)
            fail(error, *count)
            if time.monotonic() >= deadline:
                if outermost:
                    log.warning("Redis at %s has not answered for %d s: giving up", self.where,
                                time.monotonic() - deadline + self.patience)
                raise error

        try:
            result = super().call_with_retry(do, failed, *args, **kwargs)
        except BaseException:
            if outermost:  # given up, or an error no retry mends: the next outage is news
                self.lost = False
            raise
        finally:
            if outermost:
                self.deadline = None
        if failures and self.lost:
            self.lost = False
            log.warning("Redis at %s answers again", self.where)
        return result


def redis_error(error: BaseException | None, *names: str) -> BaseException | None:
    """`error`, or the error it was raised from (kombu raises its own from redis-py's), when it
    is one of redis-py's errors `names` (or a kind of one); else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__.startswith("redis") and any(
                kind.__name__ in names for kind in type(error).__mro__):
            return error
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def lost_redis(error: BaseException | None) -> BaseException | None:
    """The redis-py error behind `error` when Redis did not answer (stopped, unreachable, too
    slow); None otherwise, a refused password included (a kind of ConnectionError)."""
    return None if redis_error(error, *REFUSED) is not None else redis_error(error, *LOST)


def patient_retry(url: str, patience: float = PATIENCE_SECONDS,
                  supported_errors: tuple[type[Exception], ...] = RETRIED_ERRORS,
                  is_retryable: Callable[[Exception], bool] | None = None) -> AnnouncedRetry:
    """The retry of every call to Redis at `url`: `patience` seconds, backing off to 5 s;
    `supported_errors` (that `is_retryable` accepts, if given) are retried."""
    return AnnouncedRetry(redact_url(url), patience, ExponentialBackoff(cap=5.0, base=0.25),
                          supported_errors, is_retryable)


def patient_client(url: str, patience: float = PATIENCE_SECONDS,
                   socket_timeout: float = 30) -> redis.Redis:
    """A Redis client that rides out a restart: one call retries for `patience` seconds (and
    the try under way then), saying so."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=3, socket_timeout=socket_timeout,
        retry=patient_retry(url, patience), retry_on_error=list(RETRIED_ERRORS),
    )


def sending_retry(url: str, patience: float = PATIENCE_SECONDS) -> AnnouncedRetry:
    """The retry of a task sent through kombu to Redis at `url`: its error (OperationalError)
    is retried, for `patience` seconds, when Redis did not answer; not when it refused."""
    from kombu.exceptions import OperationalError

    return patient_retry(url, patience, (OperationalError,),
                         is_retryable=lambda error: lost_redis(error) is not None)
