"""Job state on Redis: one hash per job, written by workers, read by `flowers status`.

Key `flowers:job:<id>` holds kind, state, phase, done, total, rate, message and a JSON result;
a labelling job also has the set `flowers:job:<id>:chunks` of finished chunk numbers, so a
redelivered chunk is never counted twice, and per-process fields `chunks:<pid>@<host>`,
`loads:<pid>@<host>` (the host keeps apart the processes of containers, whose pids repeat).
States: queued -> running -> succeeded | failed | cancelled. A record expires FLOWERS_JOB_TTL
seconds (a week) after it last changed, so Redis does not grow with history.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import redis

from flowers.models.errors import (
    FlowersError,
    JobDamagedError,
    JobEndedError,
    JobNotFoundError,
    os_error_message,
)
from flowers.worker.settings import VISIBILITY_TIMEOUT

log = logging.getLogger(__name__)

KEY_PREFIX = "flowers:job:"
# Workers' heartbeat records (`worker.liveness`); a finish claim names its holder's.
WORKER_PREFIX = "flowers:worker:"
TTL_SECONDS = 7 * 24 * 3600  # the default of FLOWERS_JOB_TTL
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# The job writing a bundle folder now (`JobStore.claim_output`), by the folder's path.
OUTPUT_PREFIX = "flowers:output:"

# Records a finished chunk once; returns 1 when it was the job's last one. A job that has ended
# stays as it ended (a chunk of a worker cut off from Redis may finish late).
_CHUNK_DONE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
local added = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[7])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'errors', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'chunks:' .. ARGV[4], 1)
  for i = 8, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[1], 'loads:' .. ARGV[4], ARGV[5], 'updated', ARGV[6])
local started = tonumber(redis.call('HGET', KEYS[1], 'started') or ARGV[6])
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
if tonumber(ARGV[6]) > started then
  redis.call('HSET', KEYS[1], 'rate', done / (tonumber(ARGV[6]) - started))
end
local total = redis.call('HGET', KEYS[1], 'chunks_total')
if total and tonumber(total) == redis.call('SCARD', KEYS[2]) then return 1 end
return 0
"""

# Claims the job's next listed chunks, as many as its window has room for (chunks sent and not
# done); returns {first, count, template}, count 0 when the job has ended or nothing fits.
_CLAIM_CHUNKS = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return {0, 0, ''}
end
local sent = tonumber(redis.call('HGET', KEYS[1], 'chunks_sent') or '0')
local listed = tonumber(redis.call('HGET', KEYS[1], 'chunks_listed') or '0')
local window = tonumber(redis.call('HGET', KEYS[1], 'window') or '0')
local count = math.min(window - (sent - redis.call('SCARD', KEYS[2])), listed - sent)
if count <= 0 then return {sent, 0, ''} end
redis.call('HSET', KEYS[1], 'chunks_sent', sent + count)
return {sent, count, redis.call('HGET', KEYS[1], 'chunk_task')}
"""

# `holds(holder, seconds)`: a run's finish claim (KEYS[1] .. ':finish') checked for `holder`
# (none when empty): held by it, or by nobody (it lapsed while that run went unrenewed, and no
# other run took it: taken back for `seconds`). False when another run holds it.
_HOLDS = """
local function holds(holder, seconds)
  if holder == '' then return true end
  local held = redis.call('GET', KEYS[1] .. ':finish')
  if held == holder then return true end
  if held then return false end
  redis.call('SET', KEYS[1] .. ':finish', holder, 'EX', seconds)
  return true
end
"""

# Marks a job failed unless it has ended already (a chunk of a cancelled job that breaks late
# must not turn it into a failure) or another run holds its finish claim (holder ARGV[5], for
# ARGV[6] seconds: `_HOLDS`); returns 1 when it did. A job whose record is gone (Redis emptied)
# is marked failed all the same, and no claim is taken for it.
_FAIL = _HOLDS + """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
if state and not holds(ARGV[5], ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'failed', 'message', ARGV[1], 'exit_code', ARGV[2],
           'updated', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Writes fields (ARGV[5..], name then value) unless the job has ended or another run holds its
# finish claim (holder ARGV[3], for ARGV[4] seconds: `_HOLDS`); returns 1 when it did.
_UPDATE_LIVE = _HOLDS + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then return 0 end
if not holds(ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'updated', ARGV[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Takes a job's finish claim (KEYS[1]) for holder ARGV[1], "TASK_ID WORKER_ID", for ARGV[2]
# seconds: when it is free, when this holder has it, or when the same task message holds it
# on a worker whose heartbeat record (ARGV[3] .. WORKER_ID) is gone or marked recovered (that
# worker died and the message was put back). Returns 1 when taken.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
local take = not held or held == ARGV[1]
if not take then
  local task, worker = string.match(held, '^(%S+) (%S+)$')
  if task and task == string.match(ARGV[1], '^(%S+) ') then
    local record = ARGV[3] .. worker
    take = redis.call('EXISTS', record) == 0 or redis.call('HEXISTS', record, 'recovered') == 1
  end
end
if take then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
return 0
"""

# Makes job ARGV[1] the writer of the output KEYS[1], unless the job there now is unfinished
# (its record, ARGV[3] .. ID, says queued or running): returns that job's id, else false.
_CLAIM_OUTPUT = """
local writer = redis.call('GET', KEYS[1])
if writer and writer ~= ARGV[1] then
  local state = redis.call('HGET', ARGV[3] .. writer, 'state')
  if state == 'queued' or state == 'running' then return writer end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# Records that every chunk is enqueued; returns 1 when they are all done already.
_ENQUEUED = """
redis.call('HSET', KEYS[1], 'chunks_total', ARGV[1], 'total', ARGV[2])
if tonumber(ARGV[1]) == redis.call('SCARD', KEYS[2]) then return 1 end
return 0
"""


def hold(client: redis.Redis, key: str, holder: str, seconds: int, renew: bool = False) -> bool:
    """True for one `holder` of `key` at a time: taken if free (lapsing after `seconds`, in
    case its holder dies), and true again for the holder that has it (`renew`: for another
    `seconds`)."""
    if client.set(key, holder, nx=True, ex=seconds):
        return True
    held = client.get(key)
    if (held.decode() if isinstance(held, bytes) else held) != holder:
        return False
    if renew:
        client.expire(key, seconds)
    return True


def server_time(client: redis.Redis) -> float:
    """Redis' clock, the one heartbeats and watches are written with (hosts' clocks may
    differ)."""
    seconds, micro = client.time()
    return float(seconds) + micro / 1_000_000


class JobStore:
    """Reads and writes job records on one Redis connection."""

    def __init__(self, client: redis.Redis, ttl_seconds: int = TTL_SECONDS,
                 claim_seconds: int = VISIBILITY_TIMEOUT.default) -> None:
        """`claim_seconds`: how long a finish claim lasts when a run takes back its own that
        lapsed (the visibility timeout, which `claim_finish` is called with)."""
        self.client = client
        self.ttl = ttl_seconds
        self.claim_seconds = claim_seconds

    def _key(self, job_id: str) -> str:
        return KEY_PREFIX + job_id

    def create_job(self, kind: str, request: dict[str, Any], **fields: Any) -> str:
        """Records a new queued job; returns its id."""
        job_id = uuid.uuid4().hex
        fields.setdefault("phase", "queued")
        self.update(job_id, kind=kind, state="queued", done=0, total=0,
                    request=json.dumps(request), created=time.time(), **fields)
        return job_id

    def claim_output(self, job_id: str, output: str) -> str | None:
        """Makes `job_id` the one job writing the bundle folder `output` (two trainings to one
        folder would each replace the other's bundle, the last to end winning), unless an
        unfinished job writes it now: then returns that job's id, changing nothing."""
        writer = self.client.eval(_CLAIM_OUTPUT, 1, OUTPUT_PREFIX + output, job_id, self.ttl,
                                  KEY_PREFIX)
        return writer.decode() if isinstance(writer, bytes) else writer

    def forget(self, job_id: str) -> None:
        """Removes the record of a job that was never sent."""
        self.client.delete(self._key(job_id))

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        mapping: dict[Any, Any] = {
            name: json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            for name, value in fields.items()
        }
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def update_live(self, job_id: str, claim: str = "", **fields: Any) -> bool:
        """`update` unless the job has ended (or is gone), or, with a `claim` holder, unless
        another run holds the job's finish claim; False, changing nothing, then: what a worker
        writes late (it was cut off from Redis, and its task ran again elsewhere) never changes
        a job that has ended or another run has taken over. A claim that lapsed with no other
        run taking it (its worker's heartbeats were held up) is taken back."""
        args: list[str | float] = [time.time(), self.ttl, claim, self.claim_seconds]
        for name, value in fields.items():
            args += [name, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
        return bool(self.client.eval(_UPDATE_LIVE, 1, self._key(job_id), *args))

    def succeed(self, job_id: str, result: dict[str, Any], claim: str = "",
                **fields: Any) -> bool:
        """Marks a job succeeded with its result (and `fields`), unless it has ended already
        or `claim` no longer holds its finish claim (False)."""
        return self.update_live(job_id, claim, state="succeeded", phase="done", result=result,
                                **fields)

    def keep_photo_list(self, job_id: str, names: list[str]) -> None:
        """Keeps the photos a training job found when it started (relative paths), so that its
        training can name those gone by the time it runs."""
        self.client.set(self._key(job_id) + ":photos", json.dumps(names), ex=self.ttl)

    def photo_list(self, job_id: str) -> list[str] | None:
        """The photos kept by `keep_photo_list`, or None."""
        value = self.client.get(self._key(job_id) + ":photos")
        return None if value is None else list(json.loads(value))

    def state(self, job_id: str) -> str:
        value = self.client.hget(self._key(job_id), "state")
        return value.decode() if isinstance(value, bytes) else str(value or "")

    def start(self, job_id: str, **fields: Any) -> None:
        """Marks a queued job running; keeps the time its first task started."""
        key = self._key(job_id)
        self.client.hsetnx(key, "started", time.time())
        if self.state(job_id) == "queued":
            self.update(job_id, state="running", **fields)

    def chunk_done(self, job_id: str, index: int, images: int, errors: int, process: str,
                   loads: int, counts: dict[str, int] | None = None) -> bool:
        """Counts a finished chunk once (and adds `counts` to the record's fields of those
        names); True when it completes an enqueued job."""
        keys = [self._key(job_id), self._key(job_id) + ":chunks"]
        args: list[str | int | float] = [index, images, errors, process, loads, time.time(),
                                         self.ttl]
        for name, value in (counts or {}).items():
            args += [name, value]
        return bool(self.client.eval(_CHUNK_DONE, 2, *keys, *args))

    def watched(self, job_id: str) -> None:
        """Records that a waiting CLI looks after the job (`worker.lost_chunks`), by Redis'
        clock: the workers that read it may run on hosts whose clocks differ from the CLI's."""
        self.client.hset(self._key(job_id), "watched", server_time(self.client))

    def finished_chunks(self, job_id: str) -> set[int]:
        """The numbers of the job's chunks counted done."""
        return {int(index) for index in self.client.smembers(self._key(job_id) + ":chunks")}

    def claim_chunks(self, job_id: str) -> tuple[int, int, dict[str, Any]]:
        """(first, count, task template) of the job's next listed chunks to send, as many as
        its window has room for; count 0 when none (see `worker.chunk_list`)."""
        keys = [self._key(job_id), self._key(job_id) + ":chunks"]
        first, count, template = self.client.eval(_CLAIM_CHUNKS, 2, *keys)
        return int(first), int(count), json.loads(template) if count else {}

    def enqueued(self, job_id: str, chunks: int, images: int) -> bool:
        """Records the final chunk count; True when every chunk is already done."""
        keys = [self._key(job_id), self._key(job_id) + ":chunks"]
        return bool(self.client.eval(_ENQUEUED, 2, *keys, chunks, images))

    def fail(self, job_id: str, error: Exception, claim: str = "") -> bool:
        """Marks a job failed with the error's message (and its exit code, for the CLI);
        False, changing nothing, when the job had ended already (succeeded, failed first,
        or cancelled) or, with a `claim` holder, another run holds its finish claim (as in
        `update_live`)."""
        if isinstance(error, FlowersError):
            message, exit_code = str(error), error.exit_code
        elif isinstance(error, OSError) and (described := os_error_message(error)) is not None:
            message, exit_code = described, 1
        else:
            message, exit_code = f"{type(error).__name__}: {error}", 1
        return bool(self.client.eval(_FAIL, 1, self._key(job_id), message, exit_code,
                                     time.time(), self.ttl, claim, self.claim_seconds))

    def supersede(self, job_id: str, successor: str) -> None:
        """Cancels an unfinished job whose parts a rerun (`successor`) took over."""
        if self.client.exists(self._key(job_id)) and self.state(job_id) not in FINAL_STATES:
            self.update(job_id, state="cancelled", message=f"superseded by job {successor}")

    def claim_finish(self, job_id: str, seconds: int, holder: str) -> bool:
        """True for one run at a time: the one that assembles the job's output (or trains it).
        `holder`: "TASK_ID WORKER_ID" (`worker.liveness.claim_holder`). The claim lasts
        `seconds` (the visibility timeout), renewed by its worker's heartbeats while the task
        runs, and lapses if nothing renews it. The same task message taken again after its
        worker was found dead (its messages put back, `worker.recovery`) takes it over."""
        return bool(self.client.eval(_CLAIM, 1, self._key(job_id) + ":finish", holder, seconds,
                                     WORKER_PREFIX))

    def finish_claim_left(self, job_id: str) -> int:
        """Seconds until the claim of `claim_finish` lapses (0 if none is held)."""
        return max(0, int(self.client.ttl(self._key(job_id) + ":finish")))

    def get(self, job_id: str) -> dict[str, Any]:
        """The job's record; `JobNotFoundError` when there is none, `JobDamagedError` when the
        key holds something flowers did not write there."""
        key = self._key(job_id)
        try:
            raw = self.client.hgetall(key)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise JobDamagedError(f"the record of job {job_id} on Redis ({key}) is not a hash "
                                  "as flowers writes it: something else wrote that key; "
                                  "delete it there") from None
        if not raw:
            raise JobNotFoundError(
                f"no job {job_id!r} on this Redis; check the id and FLOWERS_BROKER_URL"
            )
        record: dict[str, Any] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        try:
            for name in ("done", "total", "errors"):
                if name in record or name != "errors":
                    record[name] = int(float(record.get(name, 0)))
            for name in ("rate", "created", "updated", "started"):
                if name in record:
                    record[name] = float(record[name])
            for name in ("result", "request"):
                if name in record:
                    record[name] = json.loads(record[name])
        except (ValueError, OverflowError) as exc:
            raise JobDamagedError(f"the record of job {job_id} on Redis ({key}) is damaged: its "
                                  f"field {name} is {record[name]!r} ({exc}); something else "
                                  "wrote it: delete the key there") from None
        return record


class ProgressReporter:
    """Writes a task's progress to its job record at most `interval` seconds apart."""

    def __init__(self, store: JobStore, job_id: str, interval: float = 0.5,
                 claim: str = "") -> None:
        """`claim`: the finish-claim holder the task runs as, if any; progress stops the task
        (`JobEndedError`) once the job has ended or that holder has lost the claim."""
        self.store = store
        self.job_id = job_id
        self.claim = claim
        self.interval = interval
        self.phase = ""
        self.phase_started = time.monotonic()
        self.last_write = 0.0

    def __call__(self, phase: str, done: int, total: int, details: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.phase_started = phase, now
        elif done < total and now - self.last_write < self.interval:
            return
        elapsed = now - self.phase_started
        rate = done / elapsed if elapsed > 0 and done else 0.0
        if not self.store.update_live(self.job_id, self.claim, phase=phase, done=done,
                                      total=total, rate=round(rate, 2)):
            raise JobEndedError(f"job {self.job_id} has ended (cancelled, or finished by "
                                "another worker), or another run of it has taken it over: "
                                "this run stops")
        self.last_write = now
