"""The Redis job store: the only module that knows the job keys.

Keys (all under the prefix `bpxw:`):

| key                          | type       | holds                                                    |
|------------------------------|------------|----------------------------------------------------------|
| `bpxw:job:<id>`              | string     | the job record, JSON (`JobRecord`; the source of truth)  |
| `bpxw:job:<id>:events`       | stream     | one entry per change, with its time, for `watch`         |
| `bpxw:job:<id>:lease`        | string, PX | holder id of the run now working on the job              |
| `bpxw:job:<id>:fence`        | counter    | fencing token: bumped at every lease grant               |
| `bpxw:job:<id>:sealed2fa`    | string     | the two-factor token sealed to the worker's key; deleted |
|                              |            | as soon as the withdrawal request has used it            |
| `bpxw:job:<id>:callback`     | hash       | delivery of the job's end callback: `state` (delivered,  |
|                              |            | failed, refused), `attempts`, `status`, `error`, `at`    |
| `bpxw:idem:<key>`            | hash       | idempotency key -> `job` (its id) and `request` (the     |
|                              |            | request's fingerprint, JSON); created with the record    |
| `bpxw:jobs`                  | sorted set | every job id by creation time (trimmed after retention)  |
| `bpxw:active`                | sorted set | unfinished job ids by time of their last change          |
| `bpxw:paused`                | string     | the kill switch: JSON who/when/why while sending is      |
|                              |            | paused (`bpx-worker pause`); absent when it is not. The  |
|                              |            | engine asks it before each withdrawal request; the       |
|                              |            | metrics gauge `bpxw_paused` reads it too                 |
| `bpxw:operations`            | stream     | operators' actions (pause, resume, cancel, resolve) with |
|                              |            | who, when and why; trimmed to about 100000 entries       |
| `bpxw:polls`                 | sorted set | `<job id>:<step id>` -> when that poll is next due; kept |
|                              |            | by `jobs/schedule.py` (PollSchedule), the poll schedule  |

A job is created by one script (`_CREATE`): the idempotency key, the record,
both indexes, the sealed token and the first event are written together or
not at all, so a submit that dies half-way cannot leave a key naming no job.

Every write to a record after submission is fenced: it happens only while the
writer's fencing token is still the newest, so a run that paused past its
lease (and was replaced) can no longer change the record. When a job ends, its
keys get the retention period as TTL.

Round trips: a step takes its lease and reads the record in one script (`take`),
and each fenced write (record, event, index, and at the end the TTLs) is one
script. The fence makes a read before the write unnecessary: only the holder of
the newest token writes, so the record a run last read or wrote is the record in
Redis, and the run keeps that copy (as JSON, parsed afresh for each change, so a
record object handed out earlier never changes under its holder).
"""

from __future__ import annotations

import functools
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, cast

import redis
import structlog

from bpx_worker.errors import (
    IdempotencyConflict,
    JobError,
    JobNotFound,
    LeaseExpiring,
    LeaseLost,
    ServiceUnavailable,
)
from bpx_worker.jobs.base import Change, Lease, Taken
from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.logs import hide_credentials
from bpx_worker.redis_client import PATIENT_RETRIES, redis_client

log = structlog.get_logger(__name__)

PREFIX = "bpxw:"

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
# KEYS: idem, record, events, jobs index, active index, sealed 2FA.
# ARGV: job id, request fingerprint, record JSON, now, sealed hex ('' for none), record key prefix,
# now as the event's `at`.
# Returns {'created'|'existing'|'legacy', job id, the fingerprint stored with the key ('' for legacy)}.
_CREATE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' then
  local existing = redis.call('HGET', KEYS[1], 'job')
  if existing and redis.call('EXISTS', ARGV[6] .. existing) == 1 then
    return {'existing', existing, redis.call('HGET', KEYS[1], 'request') or ''}
  end
elseif kind == 'string' then
  -- The older form (the job id alone): compared against the record's inputs instead.
  local existing = redis.call('GET', KEYS[1])
  if redis.call('EXISTS', ARGV[6] .. existing) == 1 then
    return {'legacy', existing, ''}
  end
elseif kind ~= 'none' then
  return redis.error_reply('idempotency key holds a ' .. kind)
end
-- New, or dangling (a key whose record was never written): no step can have run
-- without the record, so nothing was sent for it, and the key is taken afresh.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'job', ARGV[1], 'request', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
if ARGV[5] ~= '' then redis.call('SET', KEYS[6], ARGV[5]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000', '*', 'event', 'queued', 'state', 'queued', 'at', ARGV[7])
return {'created', ARGV[1], ARGV[2]}
"""
# Set the switch and record who set it, in one step; nothing when it is already set.
_PAUSE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""
# Lift the switch and record who lifted it; returns what it held (nil when it was not set).
_RESUME = """
local held = redis.call('GET', KEYS[1])
if held then
  redis.call('DEL', KEYS[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
end
return held
"""
# KEYS: lease, fence, job. ARGV: holder, ttl ms. -> {token, record} or {0, ms left on the other lease}
_TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {redis.call('INCR', KEYS[2]), redis.call('GET', KEYS[3])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""
# The fenced write. KEYS: job, fence, events, active index, lease, sealed 2FA, idempotency key.
# ARGV: token, holder, record JSON, updated_at, job id, terminal ('1' or ''), retention s,
# lease ms that must be left ('' for no check), release ('1' or ''), then the events, each as
# its number of fields and values followed by them.
# -> 1 written, 0 a newer token exists, -1 the lease has too little left, -2 no record.
_WRITE = """
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return 0 end
if ARGV[8] ~= '' and (redis.call('GET', KEYS[5]) ~= ARGV[2] or redis.call('PTTL', KEYS[5]) < tonumber(ARGV[8])) then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
redis.call('SET', KEYS[1], ARGV[3])
local i = 10
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '1000', '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
if ARGV[6] == '1' then
  redis.call('ZREM', KEYS[4], ARGV[5])
  for _, key in ipairs({KEYS[1], KEYS[3], KEYS[2], KEYS[7]}) do redis.call('EXPIRE', key, ARGV[7]) end
  redis.call('DEL', KEYS[6])
else
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
end
if ARGV[9] == '1' and redis.call('GET', KEYS[5]) == ARGV[2] then redis.call('DEL', KEYS[5]) end
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def job_key(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{job_key(job_id)}:events"


def lease_key(job_id: str) -> str:
    return f"{job_key(job_id)}:lease"


def fence_key(job_id: str) -> str:
    return f"{job_key(job_id)}:fence"


def sealed_2fa_key(job_id: str) -> str:
    return f"{job_key(job_id)}:sealed2fa"


def callback_key(job_id: str) -> str:
    return f"{job_key(job_id)}:callback"


def idem_key(idempotency_key: str) -> str:
    return f"{PREFIX}idem:{idempotency_key}"


JOBS_INDEX = f"{PREFIX}jobs"
ACTIVE_INDEX = f"{PREFIX}active"
PAUSED = f"{PREFIX}paused"

# What one request to `page` may read of the job index before it answers with what it found so far.
PAGE_SCAN_LIMIT = 1000
_PAGE_CHUNK = 200

# An observer of every recorded change: (the event written with it, the record after the change).
Observer = Callable[[Mapping[str, Any], JobRecord], None]


@dataclass(frozen=True)
class Page:
    """Jobs newest first, and the cursor of the next page (None when the index is exhausted)."""

    records: list[JobRecord]
    next_cursor: str | None

OPERATIONS_STREAM = f"{PREFIX}operations"
OPERATIONS_KEPT = 100_000

PAUSE = "pause"  # what a step held by the kill switch waits on (`steps.<id>.waiting_on`)


@dataclass(frozen=True)
class Pause:
    """Who paused sending, when (Unix seconds) and why."""

    by: str
    at: float
    reason: str


# redis-py errors that mean "Redis cannot serve us now": unreachable, timed out, loading,
# refused our credentials or our user's permissions, or something else answered on its
# port (InvalidResponse). AuthenticationError is a ConnectionError.
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoPermissionError,
                redis.exceptions.InvalidResponse)
_T = TypeVar("_T")


def _where(client: redis.Redis) -> str:
    """host:port/db (or the socket path) of the client, never its credentials."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return str(kw["path"])
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def _mapped(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def guarded(self: RedisJobStore, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(
                f"Redis at {_where(self.redis)} unavailable: {hide_credentials(str(exc)) or type(exc).__name__}"
            ) from exc

    return guarded


def _map_redis_errors(cls: type[_T]) -> type[_T]:
    """The store's boundary: every public method turns redis-py's connection errors into ServiceUnavailable."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and callable(member) and not isinstance(member, classmethod | staticmethod):
            setattr(cls, name, _mapped(member))
    return cls


@_map_redis_errors
class RedisJobStore:
    def __init__(self, client: redis.Redis, retention: int = 7 * 24 * 3600, observer: Observer | None = None):
        self.redis = client
        self.retention = retention
        self._create = client.register_script(_CREATE)
        self.observer = observer  # the metrics count what the engine records, from the events it writes
        self._acquire = client.register_script(_ACQUIRE)
        self._take = client.register_script(_TAKE)
        self._write = client.register_script(_WRITE)
        self._release = client.register_script(_RELEASE)
        self._pause = client.register_script(_PAUSE)
        self._resume = client.register_script(_RESUME)
        # The record as this process last read, wrote or staged it, per lease holder (see the module
        # docstring), and the events staged with it since the last write.
        self._held: dict[str, str] = {}
        self._staged: dict[str, list[dict[str, Any]]] = {}
        self._released: set[str] = set()  # holders whose lease a flush gave back

    @classmethod
    def from_url(
        cls, url: str, retention: int, socket_timeout: float = 10.0, *, connect_timeout: float | None = None,
        retries: int = PATIENT_RETRIES, **connection: Any,
    ) -> RedisJobStore:
        """A store on `url`. Workers keep the default `retries` to ride out a short Redis restart
        instead of failing the step; interactive commands pass few retries and a short
        `connect_timeout` to fail in seconds. `connection` holds the TLS options (`redis_client`)."""
        return cls(redis_client(url, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                                retries=retries, **connection), retention)

    # --- creation ---------------------------------------------------------------------------

    def create(self, idempotency_key: str, client_id: str, inputs: dict[str, Any],
               sealed_2fa: bytes | None = None, batch_id: str | None = None, *,
               request: Mapping[str, Any] | None = None, submitted_by: str | None = None,
               callback_url: str | None = None) -> tuple[str, bool]:
        """Create the job for `idempotency_key` once. Returns (job_id, created).

        `request` is the request's fingerprint (`WithdrawalRequest.fingerprint()`),
        stored with the key. A later call with an equal fingerprint gets the same
        job back; a different one raises `IdempotencyConflict` naming the fields
        that differ, and writes nothing. Everything is written in one script.
        """
        fingerprint = json.dumps(dict(request or {}), sort_keys=True, separators=(",", ":"))
        job_id = uuid.uuid4().hex
        now = time.time()
        record = JobRecord(job_id=job_id, idempotency_key=idempotency_key, client_id=client_id, inputs=inputs,
                           batch_id=batch_id, submitted_by=submitted_by, callback_url=callback_url,
                           created_at=now, updated_at=now)
        keys = [idem_key(idempotency_key), job_key(job_id), events_key(job_id), JOBS_INDEX, ACTIVE_INDEX,
                sealed_2fa_key(job_id)]
        args: list[str | float] = [job_id, fingerprint, record.to_json(), now,
                                   sealed_2fa.hex() if sealed_2fa is not None else "", job_key(""), json.dumps(now)]
        try:
            outcome, found, stored = self._create(keys=keys, args=args)
        except redis.ResponseError as exc:
            raise JobError(f"idempotency key {idempotency_key!r}: {exc}") from None
        if outcome == "created":
            return str(found), True
        given = json.loads(fingerprint)
        if outcome == "legacy":
            # A key written before fingerprints were kept: its record's inputs say what was asked.
            inputs = self.require(str(found)).inputs
            known = {name: inputs.get(name) for name in given}
            if _same_amount(known.get("quantity"), given.get("quantity")):
                known["quantity"] = given.get("quantity")
        else:
            known = json.loads(stored) if stored else {}
        differences = _differences(known, given)
        if differences:
            raise IdempotencyConflict(idempotency_key, str(found), differences)
        return str(found), False

    # --- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(job_key(job_id))
        return JobRecord.from_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The records that exist among `job_ids`, read in one round trip (batch progress)."""
        if not job_ids:
            return {}
        raws = self.redis.mget([job_key(job_id) for job_id in job_ids])
        return {job_id: JobRecord.from_json(raw) for job_id, raw in zip(job_ids, raws, strict=True) if raw}

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id}")
        return record

    def stalled(self, quiet_for: float) -> list[JobRecord]:
        """Unfinished jobs with no change for `quiet_for` seconds; forgets index entries past retention."""
        now = time.time()
        self.redis.zremrangebyscore(JOBS_INDEX, 0, now - self.retention)
        ids: list[str] = self.redis.zrangebyscore(ACTIVE_INDEX, 0, now - quiet_for)  # type: ignore[assignment]
        records = (self.get(job_id) for job_id in ids)
        return [r for r in records if r is not None and not r.terminal]

    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[tuple[str, dict[str, str]]]:
        """Events after stream id `after`; with `block_ms`, wait that long for the next ones."""
        answer: list[tuple[str, list[tuple[str, dict[str, str]]]]] = self.redis.xread(  # type: ignore[assignment]
            {events_key(job_id): after}, block=block_ms)
        return [(entry_id, fields) for _, entries in answer for entry_id, fields in entries]

    def jobs(self, *, since: float | None = None, until: float | None = None, state: str | None = None,
             batch_id: str | None = None, chunk: int = 500) -> list[JobRecord]:
        """Records of the jobs created between `since` and `until` (Unix seconds), oldest first, optionally
        only those in `state` or of `batch_id`. Reads the `bpxw:jobs` index; records past retention are gone."""
        ids = cast("list[str]", self.redis.zrangebyscore(JOBS_INDEX, "-inf" if since is None else since,
                                                         "+inf" if until is None else until))
        found = []
        for start in range(0, len(ids), chunk):
            for raw in self.redis.mget([job_key(job_id) for job_id in ids[start:start + chunk]]):
                if raw is None:
                    continue
                record = JobRecord.from_json(raw)
                if (state is None or record.state == state) and (batch_id is None or record.batch_id == batch_id):
                    found.append(record)
        return found

    def sealed_2fa(self, job_id: str) -> bytes | None:
        raw = self.redis.get(sealed_2fa_key(job_id))
        return bytes.fromhex(str(raw)) if raw else None

    def page(self, *, cursor: str | None = None, limit: int = 50, state: JobState | None = None,
             batch_id: str | None = None, scan_limit: int = PAGE_SCAN_LIMIT) -> Page:
        """Jobs newest first from the job index, optionally only one state or batch.

        `cursor` is a previous page's `next_cursor` (ValueError when it is not
        one). A page reads at most `scan_limit` index entries, so a filter that
        matches few jobs answers with fewer than `limit` (even none) and a
        cursor to go on from; the last page has no cursor. Jobs created while a
        client pages are newer than its cursor and do not shift its pages.
        """
        position = _parse_cursor(cursor) if cursor is not None else None
        found: list[JobRecord] = []
        scanned = 0
        while scanned < scan_limit:
            want = min(_PAGE_CHUNK, scan_limit - scanned)
            if position is None:
                entries = cast(list[tuple[str, float]], self.redis.zrevrangebyscore(
                    JOBS_INDEX, "+inf", "-inf", start=0, num=want, withscores=True))
            else:
                score, last_id = position
                # Members sharing the cursor's score sort by id (descending here): skip those not after it.
                ties = int(self.redis.zcount(JOBS_INDEX, repr(score), repr(score)))
                around = cast(list[tuple[str, float]], self.redis.zrevrangebyscore(
                    JOBS_INDEX, repr(score), "-inf", start=0, num=want + ties, withscores=True))
                entries = [(member, s) for member, s in around if s != score or member < last_id][:want]
            if not entries:
                return Page(found, None)
            raws = cast(list[str | None], self.redis.mget([job_key(member) for member, _ in entries]))
            for (member, score_of), raw in zip(entries, raws, strict=True):
                scanned += 1
                position = (float(score_of), str(member))
                if raw is None:  # ended past its retention; the index forgets it later
                    continue
                record = JobRecord.from_json(raw)
                if (state is None or record.state is state) and (batch_id is None or record.batch_id == batch_id):
                    found.append(record)
                    if len(found) == limit:
                        return Page(found, _cursor(position))
            if len(entries) < want:
                return Page(found, None)
        return Page(found, _cursor(position) if position is not None else None)

    # --- operators' gauges ------------------------------------------------------------------

    def active_jobs(self) -> tuple[int, float | None]:
        """How many jobs are unfinished, and the time of the oldest last change among them."""
        count = int(self.redis.zcard(ACTIVE_INDEX))
        oldest = cast(list[tuple[str, float]], self.redis.zrange(ACTIVE_INDEX, 0, 0, withscores=True))
        return count, (float(oldest[0][1]) if oldest else None)

    def paused(self) -> bool:
        """Whether the kill switch key is present."""
        return bool(self.redis.exists(PAUSED))

    # --- end callbacks ----------------------------------------------------------------------

    def callback_delivery(self, job_id: str) -> dict[str, str]:
        """What became of the job's end callback so far (empty before the first attempt)."""
        return cast(dict[str, str], self.redis.hgetall(callback_key(job_id)))

    def record_callback(self, job_id: str, *, state: str | None = None, attempt: bool = False,
                        status: int | None = None, error: str | None = None) -> None:
        """Note an attempt at, or the outcome of, the job's end callback; kept for the retention period."""
        values: dict[Any, Any] = {"at": repr(time.time())}
        if state is not None:
            values["state"] = state
        if status is not None:
            values["status"] = str(status)
        if error is not None:
            values["error"] = error[:500]
        key = callback_key(job_id)
        with self.redis.pipeline() as pipe:
            if attempt:
                pipe.hincrby(key, "attempts", 1)
            pipe.hset(key, mapping=values)
            pipe.expire(key, self.retention)
            pipe.execute()

    # --- leases -----------------------------------------------------------------------------

    def acquire(self, job_id: str, ttl: float) -> Lease | None:
        holder = secrets.token_hex(8)
        token = int(self._acquire(keys=[lease_key(job_id), fence_key(job_id)], args=[holder, int(ttl * 1000)]))
        return Lease(job_id, holder, token) if token else None

    def take(self, job_id: str, ttl: float) -> Taken:
        """The lease and the record in one round trip."""
        holder = secrets.token_hex(8)
        token, value = self._take(keys=[lease_key(job_id), fence_key(job_id), job_key(job_id)],
                                  args=[holder, int(ttl * 1000)])
        if not token:
            return Taken(None, wait=max(int(value), 0) / 1000)
        lease = Lease(job_id, holder, int(token))
        if value is None:
            self.release(lease)
            raise JobNotFound(f"no job {job_id}")
        self._held[holder] = value
        return Taken(lease, JobRecord.from_json(value))

    def lease_ttl(self, job_id: str) -> float:
        ms = int(self.redis.pttl(lease_key(job_id)))
        return max(ms, 0) / 1000

    def release(self, lease: Lease) -> None:
        """Give the lease back unless a flush did already; staged changes not flushed are dropped."""
        self._staged.pop(lease.holder, None)
        self._held.pop(lease.holder, None)
        if lease.holder in self._released:
            self._released.discard(lease.holder)
            return
        self._release(keys=[lease_key(lease.job_id)], args=[lease.holder])

    # --- fenced updates ---------------------------------------------------------------------

    def stage(self, lease: Lease, change: Change, event: dict[str, Any] | None = None) -> JobRecord:
        """Apply `change` to this run's copy of the record; the next `flush` writes it (and its event)."""
        raw = self._held.get(lease.holder)
        if raw is None:  # a lease taken with `acquire`, not yet written through: read the record once
            stored = self.redis.get(job_key(lease.job_id))
            if stored is None:
                raise JobNotFound(f"no job {lease.job_id}")
            raw = stored if isinstance(stored, str) else stored.decode()
        record = JobRecord.from_json(raw)
        change(record)
        record.updated_at = time.time()
        self._held[lease.holder] = record.to_json()
        staged = self._staged.setdefault(lease.holder, [])
        if event:
            staged.append({**event, "at": record.updated_at})
        return record

    def flush(self, lease: Lease, *, lease_left: float | None = None, release: bool = False) -> None:
        """Write the staged record and events while `lease` holds the newest fencing token.

        One script checks the token (and with `lease_left`, that the lease is ours with that many
        seconds left), writes the record, appends the events, updates the index of unfinished jobs
        and, with `release`, gives the lease back. Nothing staged and no release: nothing to do.
        """
        job_id = lease.job_id
        events = self._staged.get(lease.holder)
        raw = self._held.get(lease.holder)
        if events is None or raw is None:
            if release:
                self._release(keys=[lease_key(job_id)], args=[lease.holder])
                self._held.pop(lease.holder, None)
                self._released.add(lease.holder)
            return
        record = JobRecord.from_json(raw)
        fields: list[Any] = []
        for event in events:
            flat = [item for pair in _flat(event).items() for item in pair]
            fields += [len(flat), *flat]
        answer = int(self._write(
            keys=[job_key(job_id), fence_key(job_id), events_key(job_id), ACTIVE_INDEX, lease_key(job_id),
                  sealed_2fa_key(job_id), idem_key(record.idempotency_key)],
            args=[lease.token, lease.holder, raw, repr(record.updated_at), job_id, "1" if record.terminal else "",
                  self.retention, "" if lease_left is None else int(lease_left * 1000), "1" if release else "",
                  *fields],
        ))
        if answer == 0:
            raise LeaseLost(f"job {job_id}: a newer run holds the job")
        if answer == -1:
            raise LeaseExpiring(f"job {job_id}: the lease has less than {lease_left:g}s left")
        if answer == -2:
            raise JobNotFound(f"no job {job_id}")
        del self._staged[lease.holder]
        if release:
            self._held.pop(lease.holder, None)
            self._released.add(lease.holder)
        if self.observer is not None:
            for event in events:
                try:
                    self.observer(event, record)
                except Exception:  # counting a change must never fail the step that made it (logged, not swallowed)
                    log.exception("observer_failed", job_id=job_id)

    def update(self, lease: Lease, change: Change, event: dict[str, Any] | None = None, *,
               lease_left: float | None = None) -> JobRecord:
        """Apply `change` and write it, with anything staged before it, in one fenced write (`flush`)."""
        previous = self._held.get(lease.holder), list(self._staged.get(lease.holder, []))
        record = self.stage(lease, change, event)
        try:
            self.flush(lease, lease_left=lease_left)
        except LeaseExpiring:
            # Nothing was written: this run's copy goes back to what it was before the change.
            if previous[0] is None:
                self._held.pop(lease.holder, None)
            else:
                self._held[lease.holder] = previous[0]
            self._staged[lease.holder] = previous[1]
            raise
        return record

    def drop_sealed_2fa(self, job_id: str) -> None:
        self.redis.delete(sealed_2fa_key(job_id))

    # --- the kill switch and the operators' log ---------------------------------------------

    def pause_sending(self, by: str, reason: str) -> tuple[Pause, bool]:
        """Stop every worker from sending new requests that move money. Returns the pause in force
        and whether this call set it (an existing pause is kept as it is)."""
        pause = Pause(by=by, at=time.time(), reason=reason)
        fields = _flat({"action": "pause", **asdict(pause)})
        newly = self._pause(keys=[PAUSED, OPERATIONS_STREAM],
                            args=[json.dumps(asdict(pause)), OPERATIONS_KEPT, *_pairs(fields)])
        if newly:
            return pause, True
        current = self.sending_paused()
        return (current or pause), False

    def resume_sending(self, by: str, reason: str) -> Pause | None:
        """Lift the kill switch; returns the pause that was lifted, or None when sending was not paused."""
        fields = _flat({"action": "resume", "by": by, "at": time.time(), "reason": reason})
        held = self._resume(keys=[PAUSED, OPERATIONS_STREAM], args=[OPERATIONS_KEPT, *_pairs(fields)])
        return _pause_of(held) if held is not None else None

    def sending_paused(self) -> Pause | None:
        """The pause in force, or None."""
        raw = self.redis.get(PAUSED)
        return _pause_of(raw) if raw is not None else None

    def send_hold(self) -> str | None:
        """The engine's gate: what new requests that move money wait on now (`pause`), or None to go on."""
        return PAUSE if self.redis.exists(PAUSED) else None

    def record_operation(self, action: str, by: str, reason: str, **detail: Any) -> None:
        """Add an operator's action to `bpxw:operations`."""
        fields = _flat({"action": action, "by": by, "at": time.time(), "reason": reason, **detail})
        self.redis.xadd(OPERATIONS_STREAM, fields, maxlen=OPERATIONS_KEPT, approximate=True)  # type: ignore[arg-type]

    def operations(self, since: float | None = None) -> list[dict[str, str]]:
        """Operators' actions, oldest first, from `since` (Unix seconds) on."""
        start = "-" if since is None else f"{int(since * 1000)}-0"
        entries: list[tuple[str, dict[str, str]]] = self.redis.xrange(OPERATIONS_STREAM, min=start)  # type: ignore[assignment]
        return [fields for _, fields in entries]



def _differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each field whose value differs: (stored, given), in a stable order."""
    return {name: (stored.get(name), given.get(name)) for name in sorted({*stored, *given})
            if stored.get(name) != given.get(name)}


def _same_amount(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and Decimal(str(a)) == Decimal(str(b))
    except InvalidOperation:
        return False


def _cursor(position: tuple[float, str]) -> str:
    return f"{position[0]!r}:{position[1]}"


def _parse_cursor(cursor: str) -> tuple[float, str]:
    score, sep, job_id = cursor.partition(":")
    try:
        value = float(score)
    except ValueError:
        value = float("nan")
    if not sep or not job_id or value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a cursor of the job index")
    return value, job_id


def _pause_of(raw: Any) -> Pause:
    """The pause a `bpxw:paused` value records; a key set by other means (by hand) still pauses."""
    try:
        return Pause(**json.loads(raw))
    except (ValueError, TypeError):
        return Pause(by="unknown", at=0.0, reason=f"{PAUSED} set to {str(raw)[:100]!r} by other means")


def _pairs(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _flat(event: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in event.items() if v is not None}
