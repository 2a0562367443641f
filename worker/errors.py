"""Every error the worker raises, under one root.

    WorkerError
    ├── ConfigurationError      settings or keys unusable; raised at start
    │   └── UnsendableRequest   a request that cannot be put on the wire as built (URL, header,
    │                           proxy, body); certainly nothing was sent
    ├── ServiceUnavailable      Redis cannot be reached, refused the credentials or timed out
    ├── InvalidRequest          a withdrawal request refused at the edge (names each field)
    ├── IdempotencyConflict     an idempotency key reused for a different request (names the fields)
    ├── BalanceUnavailable      a batch's balance read got no answer from a worker (nothing was sent)
    ├── WorkflowError           the Arazzo document or its evaluation
    │   ├── DocumentError       document invalid, operationId not found
    │   ├── ExpressionError     malformed or unresolvable runtime expression
    │   └── CriteriaError       malformed success criterion
    ├── JobError                the job store
    │   ├── JobNotFound         no record for that job id
    │   └── LeaseLost           another run of the same step holds a newer lease
    │       └── LeaseExpiring   the lease has too little time left for what comes next
    ├── JobEnded                a step ended its job failed / needs_review (ends the Celery task as a failure)
    └── ExchangeError           talking to the exchange; the type decides what may be done next
        ├── TransientError      certainly not processed: retry with backoff
        │   └── RateLimited     not sent: the shared rate limit toward the exchange binds; re-queue
        │                       after `retry_after` (not counted as a failure of the step)
        ├── RejectedError       processed and refused (4xx), or a read answered with a redirect
        │                       the client does not follow (code REDIRECT): terminal, keeps code and message
        └── AmbiguousError      may have been processed: look it up before anything is re-sent

Messages never carry secrets: the API secret, signatures and two-factor tokens
are kept out of every error raised here.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of all worker errors."""


class ConfigurationError(WorkerError):
    pass


class UnsendableRequest(ConfigurationError):
    """The request could not be put on the wire as built: nothing was sent.

    An invalid base URL, proxy URL, header value or body is a fault of the
    settings or of the document, not of the exchange: retrying cannot help.
    """


class ServiceUnavailable(WorkerError):
    """A service the call needs (Redis) cannot be reached or refused us. The message never holds credentials."""


class InvalidRequest(WorkerError):
    """A request refused at the edge. `errors` maps each bad field to its reason."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        detail = "; ".join(f"{field}: {reason}" for field, reason in self.errors.items())
        super().__init__(f"invalid withdrawal request: {detail}")


class IdempotencyConflict(WorkerError):
    """An idempotency key already names a job whose request differs; nothing was written.

    `fields` names each differing field; `differences` maps it to
    (the job's value, this request's value). No field is secret: the 2FA token
    is never part of the comparison.
    """

    def __init__(self, idempotency_key: str, job_id: str, differences: dict[str, tuple[object, object]]):
        self.idempotency_key = idempotency_key
        self.job_id = job_id
        self.differences = dict(differences)
        self.fields = tuple(self.differences)
        super().__init__(
            f"idempotency key {idempotency_key!r} already belongs to job {job_id}, whose request differs in "
            f"{', '.join(self.fields)}; nothing was written"
        )


class BalanceUnavailable(WorkerError):
    """No worker answered a batch's balance read in time, or the read failed; nothing was submitted."""


class WorkflowError(WorkerError):
    pass


class DocumentError(WorkflowError):
    pass


class ExpressionError(WorkflowError):
    pass


class CriteriaError(WorkflowError):
    pass


class JobError(WorkerError):
    pass


class JobNotFound(JobError):
    pass


class LeaseLost(JobError):
    pass


class JobEnded(WorkerError):
    """A step ended its job `failed` or `needs_review`; the record already says so.

    Raised by the step task after the record is written, so that Celery (and
    Flower) show the task as failed with the job's code. It is never retried.
    The arguments are plain strings, so the exception pickles and reads well
    in Flower: `JobEnded('INSUFFICIENT_FUNDS', 'failed', '<job id>')`.
    """

    def __init__(self, code: str, state: str, job_id: str):
        super().__init__(code, state, job_id)
        self.code, self.state, self.job_id = code, state, job_id

    def __str__(self) -> str:
        return f"{self.code}: job {self.job_id} ended {self.state}"


class LeaseExpiring(LeaseLost):
    """The lease is still ours but would run out before what the write guards could finish."""


class ExchangeError(WorkerError):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientError(ExchangeError):
    """The exchange certainly did not act on the request; it is safe to send again."""


class RateLimited(TransientError):
    """Not sent: the shared rate limit would make this request wait longer than a worker slot may."""


class AmbiguousError(ExchangeError):
    """The request may have been processed; never re-send without looking it up first."""


class RejectedError(ExchangeError):
    """The exchange refused the request. Terminal: keep `code` and `message`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}", status=status)
        self.code = code
        self.message = message
