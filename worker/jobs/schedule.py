"""The poll schedule: when each waiting poll of a polled step is next due, kept in Redis.

A poll that says "not yet" is not a Celery countdown message (Celery keeps those in the
memory of whichever worker fetched them until they are due: thousands of pending
withdrawals would sit in worker memory and share the queue with fresh work). It is one
member of a sorted set scored by its due time; a waker in every worker claims the due
ones and sends them to the polls queue.

| key           | type       | holds                                                              |
|---------------|------------|--------------------------------------------------------------------|
| `bpxw:polls`  | sorted set | `<job id>:<step id>` -> Unix time the poll is next due             |

Claiming is one script: the due members are read and pushed `hold` seconds into the future
in the same step, so two wakers never send the same poll, and a poll whose wake was lost
(a worker that died between claiming and sending) comes due again after `hold`. The poll's
own run overwrites the score (the next poll) or removes the member (settled, ended).
"""

from __future__ import annotations

import redis

from bpx_worker.jobs.store import PREFIX

POLLS_KEY = f"{PREFIX}polls"

# KEYS: schedule. ARGV: now, limit, claimed-until. -> the members that were due and their due times
# (member, score, member, score, ...), now claimed.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], ARGV[3], due[i]) end
return due
"""


def _member(job_id: str, step_id: str) -> str:
    return f"{job_id}:{step_id}"


class PollSchedule:
    """Due times of waiting polls; the only code that knows the schedule's key."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._claim = client.register_script(_CLAIM)

    def schedule(self, job_id: str, step_id: str, due: float) -> None:
        """Poll `step_id` of the job again at `due` (Unix time); replaces any earlier due time."""
        self.schedule_many(step_id, {job_id: due})

    def schedule_many(self, step_id: str, due: dict[str, float]) -> None:
        """`schedule` for many jobs (job id -> due time) in one write."""
        if due:
            self.redis.zadd(POLLS_KEY, {_member(job_id, step_id): at for job_id, at in due.items()})

    def cancel(self, job_id: str, step_id: str) -> None:
        self.cancel_many(step_id, [job_id])

    def cancel_many(self, step_id: str, job_ids: list[str]) -> None:
        if job_ids:
            self.redis.zrem(POLLS_KEY, *(_member(job_id, step_id) for job_id in job_ids))

    def claim(self, now: float, limit: int, hold: float) -> list[tuple[str, str, float]]:
        """Up to `limit` polls due at `now`, as (job id, step id, due time); each comes due again after `hold` s."""
        answer = self._claim(keys=[POLLS_KEY], args=[repr(now), limit, repr(now + hold)])
        out = []
        for member, score in zip(answer[::2], answer[1::2], strict=True):
            text = member.decode() if isinstance(member, bytes) else str(member)
            job_id, _, step_id = text.partition(":")
            out.append((job_id, step_id, float(score)))
        return out

    def waiting(self) -> int:
        """Polls in the schedule (due or not)."""
        return int(self.redis.zcard(POLLS_KEY))

    def due_at(self, job_id: str, step_id: str) -> float | None:
        score = self.redis.zscore(POLLS_KEY, _member(job_id, step_id))
        return None if score is None else float(score)
