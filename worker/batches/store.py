"""The Redis batch store: the only module that knows the batch keys.

Batch records and row keys are kept for BATCH_RETENTION (400 days by default),
far longer than job records (JOB_RETENTION, whose idempotency keys expire with
the job): a row key remembers what it paid long after its job record is gone.

| key                                | type       | holds                                                      |
|------------------------------------|------------|------------------------------------------------------------|
| `bpxw:batch:<id>`                  | hash       | the batch's head (`BatchRecord`, one JSON value per field) |
| `bpxw:batch:<id>:rows`             | hash       | line -> the row (`BatchRow`): what it pays, status, job    |
| `bpxw:batch:<id>:ended`            | hash       | line -> how the row's job ended (`RowEnd`), written once   |
| `bpxw:batchfile:<ns>:<sha256>`     | string     | the batch that accepted a file with these bytes            |
| `bpxw:rowkey:<ns>:<key>`           | hash       | what a row key paid: fingerprint, batch, line, job, end    |
| `bpxw:batches`                     | sorted set | every batch id by creation time                            |
| `bpxw:batches:open`                | set        | batches still submitting or running (the sweep looks here) |
| `bpxw:reserved:<symbol>`           | hash       | batch id -> what its unfinished rows still spend (1e-18s) |
| `bpxw:balances:<request>`          | list       | a worker's answer to one balance read (JSON); 60 s         |
| `bpxw:schedule:<name>:lock`        | string, PX | a run of that payout schedule in progress                  |

Reservations are checked and taken in one Lua script against the balance a
worker just read: the sum of every other batch's reservation plus this one
must fit, or nothing is reserved. Amounts are integers of 1e-18 as decimal
strings, added and compared digit by digit in the script: Lua numbers are
doubles, and money is never a float.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from typing import Any, cast

import redis

from bpx_worker.batches.record import BatchRecord, BatchRow, RowEnd, RowKey
from bpx_worker.redis_client import PATIENT_RETRIES, redis_client

PREFIX = "bpxw:"
BATCHES_INDEX = f"{PREFIX}batches"
OPEN_BATCHES = f"{PREFIX}batches:open"
BALANCE_ANSWER_TTL = 60


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def rows_key(batch_id: str) -> str:
    return f"{batch_key(batch_id)}:rows"


def ended_key(batch_id: str) -> str:
    return f"{batch_key(batch_id)}:ended"


def file_key(namespace: str, sha256: str) -> str:
    return f"{PREFIX}batchfile:{namespace}:{sha256}"


def row_key_key(namespace: str, key: str) -> str:
    return f"{PREFIX}rowkey:{namespace}:{key}"


def reserved_key(symbol: str) -> str:
    return f"{PREFIX}reserved:{symbol}"


def balances_key(request_id: str) -> str:
    return f"{PREFIX}balances:{request_id}"


def schedule_lock_key(name: str) -> str:
    return f"{PREFIX}schedule:{name}:lock"


def to_units(amount: Decimal, *, floor: bool = False) -> str:
    """A decimal amount as an integer count of 1e-18; a balance (`floor`) is rounded down, never up."""
    if amount <= 0:
        return "0"
    with localcontext() as ctx:
        ctx.prec = 80  # exact for 20 integer digits and 18 places, and for any balance the exchange reports
        scaled = amount.scaleb(18)
        whole = scaled.to_integral_value(rounding=ROUND_FLOOR if floor else ROUND_CEILING)
    return format(whole, "f")


def from_units(units: str) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 80
        return Decimal(units).scaleb(-18).normalize()


_DECIMAL_LUA = """
local function strip(a)
  a = string.gsub(a, '^0+', '')
  if a == '' then return '0' end
  return a
end
local function cmp(a, b)
  a = strip(a); b = strip(b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end
local function add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry
    if i > 0 then d = d + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then d = d + string.byte(b, j) - 48; j = j - 1 end
    table.insert(out, 1, string.char(48 + d % 10))
    carry = math.floor(d / 10)
  end
  return strip(table.concat(out))
end
"""
# KEYS: the reservation hash of each symbol. ARGV: batch id, force ('1' reserves even what does not fit),
# then per symbol: units needed, units available. Returns {1 or 0, then per symbol that does not fit:
# its index (1-based) and what the other batches hold}.
_RESERVE = _DECIMAL_LUA + """
local id, force, short = ARGV[1], ARGV[2] == '1', {}
for i, key in ipairs(KEYS) do
  local need, have, others = ARGV[1 + 2 * i], ARGV[2 + 2 * i], '0'
  local all = redis.call('HGETALL', key)
  for k = 1, #all, 2 do
    if all[k] ~= id then others = add(others, all[k + 1]) end
  end
  if cmp(add(others, need), have) > 0 then
    table.insert(short, i); table.insert(short, others)
  end
end
if #short > 0 and not force then
  table.insert(short, 1, 0)
  return short
end
for i, key in ipairs(KEYS) do
  local need = ARGV[1 + 2 * i]
  if strip(need) == '0' then redis.call('HDEL', key, id) else redis.call('HSET', key, id, need) end
end
table.insert(short, 1, 1)
return short
"""
# KEYS: the row key. ARGV: fingerprint JSON (canonical), batch id, line, TTL seconds.
# Returns {'new'|'same'|'conflict', batch, job, line or the stored fingerprint}.
_CLAIM_ROW_KEY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'batch', ARGV[2], 'line', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'new', ARGV[2], '', ARGV[3]}
end
local r = redis.call('HMGET', KEYS[1], 'fingerprint', 'batch', 'job', 'line')
if r[1] ~= ARGV[1] then return {'conflict', r[2] or '', r[3] or '', r[1] or ''} end
return {'same', r[2] or '', r[3] or '', r[4] or ''}
"""


def canonical(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":"))


class BatchStore:
    def __init__(self, client: redis.Redis, retention: int = 400 * 24 * 3600):
        self.redis = client
        self.retention = retention
        self._reserve = client.register_script(_RESERVE)
        self._claim = client.register_script(_CLAIM_ROW_KEY)

    @classmethod
    def from_url(cls, url: str, retention: int, socket_timeout: float = 10.0, **connection: Any) -> BatchStore:
        """A store on `url` that rides out a short Redis restart; `connection` holds the TLS options."""
        return cls(redis_client(url, socket_timeout=socket_timeout, retries=PATIENT_RETRIES, **connection), retention)

    # --- the batch ------------------------------------------------------------------------------

    def claim_file(self, namespace: str, sha256: str, batch_id: str) -> str:
        """The batch that owns these file bytes: `batch_id` if it got them first, else the earlier one."""
        key = file_key(namespace, sha256)
        if self.redis.set(key, batch_id, nx=True, ex=self.retention):
            return batch_id
        return str(self.redis.get(key) or batch_id)

    def file_batch(self, namespace: str, sha256: str) -> str | None:
        found = self.redis.get(file_key(namespace, sha256))
        return str(found) if found else None

    def release_file(self, namespace: str, sha256: str, batch_id: str) -> None:
        """Forget a refused batch's claim on its file, so the same file can be submitted again later."""
        key = file_key(namespace, sha256)
        if self.redis.get(key) == batch_id:
            self.redis.delete(key)

    def create(self, record: BatchRecord, rows: Iterable[BatchRow]) -> None:
        batch_id = record.batch_id
        with self.redis.pipeline() as pipe:
            pipe.hset(batch_key(batch_id), mapping=_mapping(record.to_hash()))
            entries = {str(row.line): row.model_dump_json() for row in rows}
            if entries:
                pipe.hset(rows_key(batch_id), mapping=_mapping(entries))
            pipe.zadd(BATCHES_INDEX, {batch_id: record.created_at})
            pipe.sadd(OPEN_BATCHES, batch_id)
            for key in (batch_key(batch_id), rows_key(batch_id)):
                pipe.expire(key, self.retention)
            pipe.execute()

    def get(self, batch_id: str) -> BatchRecord | None:
        raw = cast(dict[str, str], self.redis.hgetall(batch_key(batch_id)))
        return BatchRecord.from_hash(raw) if raw else None

    def set(self, batch_id: str, **fields: Any) -> None:
        """Set some fields of the head (each one alone: no read-modify-write)."""
        self.redis.hset(batch_key(batch_id), mapping=_mapping({k: json.dumps(v) for k, v in fields.items()}))

    def take_tracking(self, batch_id: str) -> str:
        """A new tracker nonce: the chain carrying it supersedes any older one."""
        nonce = secrets.token_hex(6)
        self.set(batch_id, tracker=nonce, tracked_at=time.time())
        return nonce

    def rows(self, batch_id: str) -> list[BatchRow]:
        raw = self.redis.hgetall(rows_key(batch_id))
        return sorted((BatchRow.model_validate_json(v) for v in raw.values()), key=lambda r: r.line)

    def put_row(self, batch_id: str, row: BatchRow) -> None:
        self.redis.hset(rows_key(batch_id), str(row.line), row.model_dump_json())

    def ended(self, batch_id: str) -> dict[int, RowEnd]:
        raw = self.redis.hgetall(ended_key(batch_id))
        return {int(line): RowEnd.model_validate_json(v) for line, v in raw.items()}

    def end_rows(self, batch_id: str, ends: Mapping[int, RowEnd]) -> None:
        if not ends:
            return
        with self.redis.pipeline() as pipe:
            for line, end in ends.items():
                pipe.hsetnx(ended_key(batch_id), str(line), end.model_dump_json())
            pipe.expire(ended_key(batch_id), self.retention)
            pipe.execute()

    def finish(self, batch_id: str, **fields: Any) -> None:
        """Mark the batch no longer open and restart its retention from now."""
        with self.redis.pipeline() as pipe:
            pipe.hset(batch_key(batch_id), mapping=_mapping({k: json.dumps(v) for k, v in fields.items()}))
            pipe.srem(OPEN_BATCHES, batch_id)
            for key in (batch_key(batch_id), rows_key(batch_id), ended_key(batch_id)):
                pipe.expire(key, self.retention)
            pipe.execute()

    def recent(self, limit: int = 20) -> list[BatchRecord]:
        self.redis.zremrangebyscore(BATCHES_INDEX, 0, time.time() - self.retention)
        ids = cast(list[str], self.redis.zrevrange(BATCHES_INDEX, 0, limit - 1))
        records = (self.get(batch_id) for batch_id in ids)
        return [r for r in records if r is not None]

    def open_batches(self) -> list[str]:
        return sorted(cast(set[str], self.redis.smembers(OPEN_BATCHES)))

    # --- row keys -------------------------------------------------------------------------------

    def row_keys(self, namespace: str, keys: list[str]) -> dict[str, RowKey]:
        """What each of `keys` paid before, for those that paid anything."""
        with self.redis.pipeline() as pipe:
            for key in keys:
                pipe.hgetall(row_key_key(namespace, key))
            answers = pipe.execute()
        return {key: _row_key(raw) for key, raw in zip(keys, answers, strict=True) if raw}

    def claim_row_key(self, namespace: str, key: str, fingerprint: Mapping[str, Any], batch_id: str,
                      line: int) -> tuple[str, str, str | None, str]:
        """('new' | 'same' | 'conflict', the owning batch, its job or None, line or the stored fingerprint)."""
        kind, batch, job, extra = self._claim(keys=[row_key_key(namespace, key)],
                                              args=[canonical(fingerprint), batch_id, line, self.retention])
        return str(kind), str(batch), str(job) or None, str(extra)

    def set_row_key_job(self, namespace: str, key: str, job_id: str) -> str:
        """Record the row key's job once; returns the job it names (the first one set)."""
        name = row_key_key(namespace, key)
        self.redis.hsetnx(name, "job", job_id)
        return str(self.redis.hget(name, "job") or job_id)

    def end_row_key(self, namespace: str, key: str, state: str, withdrawal_id: str | None) -> None:
        mapping = {"state": state, **({"withdrawal_id": withdrawal_id} if withdrawal_id else {})}
        self.redis.hset(row_key_key(namespace, key), mapping=_mapping(mapping))

    # --- reservations ---------------------------------------------------------------------------

    def reserve(self, batch_id: str, needs: Mapping[str, Decimal], available: Mapping[str, Decimal],
                force: bool = False) -> dict[str, Decimal]:
        """Reserve `needs` per symbol if, with every other batch's reservation, they fit in `available`.

        Returns the symbols that do not fit, each with what the other batches hold (empty: reserved).
        With `force` the reservation is taken anyway (--allow-partial), so other batches still see it.
        """
        symbols = sorted(needs)
        args: list[Any] = [batch_id, "1" if force else "0"]
        for symbol in symbols:
            args += [to_units(needs[symbol]), to_units(available.get(symbol, Decimal(0)), floor=True)]
        answer = self._reserve(keys=[reserved_key(s) for s in symbols], args=args)
        short = answer[1:]
        return {symbols[int(short[i]) - 1]: from_units(str(short[i + 1])) for i in range(0, len(short), 2)}

    def set_reservation(self, batch_id: str, needs: Mapping[str, Decimal], symbols: Iterable[str]) -> None:
        """Lower (or drop) the batch's reservation to what its unfinished rows still need."""
        with self.redis.pipeline() as pipe:
            for symbol in symbols:
                amount = needs.get(symbol, Decimal(0))
                if amount > 0:
                    pipe.hset(reserved_key(symbol), batch_id, to_units(amount))
                else:
                    pipe.hdel(reserved_key(symbol), batch_id)
            pipe.execute()

    def reserved(self, symbols: Iterable[str], excluding: str | None = None) -> dict[str, Decimal]:
        """What the batches in flight (other than `excluding`) hold, per symbol."""
        result: dict[str, Decimal] = {}
        for symbol in symbols:
            held = cast(dict[str, str], self.redis.hgetall(reserved_key(symbol)))
            result[symbol] = sum((from_units(v) for k, v in held.items() if k != excluding), Decimal(0))
        return result

    # --- balance reads through a worker ---------------------------------------------------------

    def answer_balances(self, request_id: str, answer: Mapping[str, Any]) -> None:
        key = balances_key(request_id)
        with self.redis.pipeline() as pipe:
            pipe.rpush(key, json.dumps(dict(answer)))
            pipe.expire(key, BALANCE_ANSWER_TTL)
            pipe.execute()

    def wait_balances(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The worker's answer, or None after `timeout` seconds (waited in slices below the socket timeout)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            answer = self.redis.blpop([balances_key(request_id)], timeout=max(1, min(5, int(left + 0.999))))
            if answer is not None:
                loaded: dict[str, Any] = json.loads(answer[1])
                return loaded
        return None

    # --- schedules ------------------------------------------------------------------------------

    def lock_schedule(self, name: str, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        return token if self.redis.set(schedule_lock_key(name), token, nx=True, px=int(ttl * 1000)) else None

    def refresh_schedule_lock(self, name: str, token: str, ttl: float) -> bool:
        key = schedule_lock_key(name)
        if self.redis.get(key) != token:
            return False
        return bool(self.redis.pexpire(key, int(ttl * 1000)))

    def unlock_schedule(self, name: str, token: str) -> None:
        key = schedule_lock_key(name)
        if self.redis.get(key) == token:
            self.redis.delete(key)


def _mapping(fields: Mapping[str, str]) -> dict[Any, Any]:
    """redis-py's stubs want a mapping of its own key and value union; ours are all str."""
    return dict(fields)


def _row_key(raw: Mapping[str, str]) -> RowKey:
    return RowKey(fingerprint=json.loads(raw.get("fingerprint") or "{}"), batch=raw.get("batch", ""),
                  line=int(raw.get("line") or 0), job=raw.get("job") or None, state=raw.get("state") or None,
                  withdrawal_id=raw.get("withdrawal_id") or None)
