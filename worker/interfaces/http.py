"""The HTTP intake: services in any language submit withdrawals and read their jobs (FastAPI).

- `POST /v1/withdrawals` (token): 201 a new job; 200 the same key and request again (the same
  job); 409 the same key with another request; 422 naming each bad field.
- `GET /v1/withdrawals/{job_id}` (token): 200 the job record, 404.
- `GET /v1/withdrawals?state=&batch=&limit=&cursor=` (token): a page of job records, newest
  first, and `next_cursor`.
- `GET /healthz` (alive), `GET /readyz` (Redis answers, else 503), `GET /metrics` (Prometheus
  text format, `bpx_worker.metrics`): no token.

FastAPI serves the OpenAPI description at `/openapi.json` and its docs page at
`/docs`. Every refusal is a JSON `Problem` (`error`, `message`, and `fields`
naming each bad field). Tokens are compared in constant time and never
logged; the request body (which may hold a two-factor token) is never logged.

(No `from __future__ import annotations` here: FastAPI reads the endpoints'
annotations, some of which name objects local to `create_app`.)
"""

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

import redis
import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bpx_worker import callbacks, metrics
from bpx_worker.config.documents import blockchain_names
from bpx_worker.config.settings import Settings
from bpx_worker.errors import ConfigurationError, IdempotencyConflict, InvalidRequest, ServiceUnavailable
from bpx_worker.interfaces.api import submit_request
from bpx_worker.jobs.record import JobRecord, JobState
from bpx_worker.jobs.store import RedisJobStore
from bpx_worker.redis_client import redis_client
from bpx_worker.tasks.app import job_store
from bpx_worker.withdrawal.request import (
    ADDRESS_MAX,
    QUANTITY_MAX_DECIMAL_PLACES,
    QUANTITY_MAX_INTEGER_DIGITS,
    SYMBOL_MAX,
    WINDOW_MAX_MS,
    WINDOW_MIN_MS,
    SafetyLimits,
    WithdrawalRequest,
    parse_request,
)

log = structlog.get_logger(__name__)

BODY_MAX = 16 * 1024  # a withdrawal request is a few hundred bytes
PAGE_MAX = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"


# --- what the OpenAPI description shows -------------------------------------------------------------


_QUANTITY_PATTERN = rf"^[0-9]{{1,{QUANTITY_MAX_INTEGER_DIGITS}}}(\.[0-9]{{1,{QUANTITY_MAX_DECIMAL_PLACES}}})?$"


class WithdrawalSubmission(BaseModel):
    """The body of `POST /v1/withdrawals`: the Python API's fields, and an optional callback URL."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"symbol": "USDC", "blockchain": "Solana", "address": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
         "quantity": "12.5", "callback_url": "https://payouts.internal/hooks/withdrawals"}]})

    # The patterns document the checks of `bpx_worker.withdrawal.request`, which decide.
    symbol: str = Field(max_length=SYMBOL_MAX, pattern=r"^[A-Za-z0-9]+(\.[A-Za-z0-9]+)*$",
                        description="Asset code, exactly as the exchange spells it (e.g. `USDC`).")
    blockchain: Literal[tuple(sorted(blockchain_names()))] = Field(  # type: ignore[valid-type]
        description="Blockchain, exactly as the exchange spells it (e.g. `Solana`).")
    address: str = Field(max_length=ADDRESS_MAX, pattern=r"^[A-Za-z0-9._-]+$",
                         description="Destination address, on the account's 2FA-exempt address book.")
    quantity: str = Field(pattern=_QUANTITY_PATTERN,
                          description="A plain decimal string such as `12.5`. JSON numbers are refused: a float may "
                                      "already have lost the amount meant.")
    two_factor_token: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,64}$",
                                         description="Sealed to the worker's key at once; never stored or logged "
                                                     "in clear.")
    window: int | None = Field(None, ge=WINDOW_MIN_MS, le=WINDOW_MAX_MS, description="X-Window in ms.")
    callback_url: str | None = Field(None, description="Called with the signed job record when the job ends; its "
                                                       "host must be on CALLBACK_ALLOWED_HOSTS.")


class Problem(BaseModel):
    """Why a request was refused."""

    error: str = Field(description="unauthorized, invalid_request, not_found, idempotency_conflict, too_large, "
                                   "unavailable")
    message: str
    fields: dict[str, str] | None = Field(None, description="Each bad field (or header, or parameter) and why.")
    job_id: str | None = Field(None, description="409: the job the idempotency key already names.")


class JobPage(BaseModel):
    items: list[JobRecord]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Health(BaseModel):
    status: str


def _problem(status: int, error: str, message: str, *, fields: Mapping[str, str] | None = None,
             job_id: str | None = None, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = Problem(error=error, message=message, fields=dict(fields) if fields else None, job_id=job_id)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=dict(headers or {}))


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid bearer token."},
    422: {"model": Problem, "description": "A field, header or parameter is invalid; `fields` names each."},
    503: {"model": Problem, "description": "Redis or the broker is unreachable; try again."},
}


# --- tokens -------------------------------------------------------------------------------------------


class Tokens:
    """The intake's bearer tokens by name; a presented token is compared with each in constant time."""

    def __init__(self, secrets: Mapping[str, str]):
        self._secrets = [(name, secret.encode()) for name, secret in secrets.items()]

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def name_of(self, presented: str) -> str | None:
        given = presented.encode()
        found = None
        for name, secret in self._secrets:  # every one is compared, whichever matches
            if hmac.compare_digest(given, secret) and found is None:
                found = name
        return found


class _Unauthorized(Exception):
    pass


class _BadParameters(Exception):
    def __init__(self, fields: dict[str, str]):
        super().__init__(fields)
        self.fields = fields


def _only_query(*allowed: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters the operation does not have (`?stat=failed` is a typo, not
    "every job"), and any given twice (which one would count?)."""

    def check(request: Request) -> None:
        params = request.query_params
        fields = {name[:64]: "unknown parameter" for name in sorted(set(params) - set(allowed))}
        fields.update({name: "given more than once" for name in allowed if len(params.getlist(name)) > 1})
        if fields:
            raise _BadParameters(fields)

    return check


# --- the app ------------------------------------------------------------------------------------------


def _version() -> str:
    try:
        return version("backpack-withdrawal-worker")
    except PackageNotFoundError:
        return "0"


def encode_cursor(cursor: str | None) -> str | None:
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=") if cursor is not None else None


def decode_cursor(text: str) -> str:
    """The store's cursor from the opaque one the API hands out; ValueError when it is not one."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor this service returned") from None


def create_app(settings: Settings, store: Callable[[], RedisJobStore] = job_store) -> FastAPI:
    """The intake app. Refuses (ConfigurationError) without at least one token in INTAKE_TOKENS."""
    tokens = Tokens(settings.intake_token_secrets())
    if not tokens:
        raise ConfigurationError("INTAKE_TOKENS (or INTAKE_TOKENS_FILE): the intake needs at least one "
                                 "name=secret bearer token")
    callback_names = frozenset(settings.callback_secret_values())
    limits = SafetyLimits(max_quantity=settings.max_quantity, allowed_destinations=settings.allowed_destinations)
    # Readiness must answer quickly: no retries, short timeouts (the job store rides out restarts instead).
    probe = redis_client(settings.redis_url, socket_timeout=1.0, retries=0, health_check_interval=0,
                         decode_responses=False, **settings.redis_ssl_options())
    registry = metrics.intake_registry(store)
    counters = metrics.metrics()

    app = FastAPI(
        title="Backpack withdrawal intake",
        version=_version(),
        description="Submit balance-checked withdrawals and read their job records. Every `/v1` call needs "
                    "`Authorization: Bearer <token>`. Money fields are decimal strings.",
    )
    bearer = HTTPBearer(auto_error=False, description="A token from INTAKE_TOKENS.")

    def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        name = tokens.name_of(credentials.credentials) if credentials is not None else None
        if name is None:
            raise _Unauthorized
        return name

    Caller = Annotated[str, Depends(caller)]

    # --- refusals, all in one shape ---------------------------------------------------------------

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
        return _problem(401, "unauthorized", "send Authorization: Bearer <token> with a token of this service",
                        headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(_BadParameters)
    async def _bad_parameters(_: Request, exc: _BadParameters) -> JSONResponse:
        return _problem(422, "invalid_request", "the request is invalid; nothing was written", fields=exc.fields)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ())]
            name = loc[1] if len(loc) > 1 and loc[0] in ("header", "query", "path") else ".".join(loc) or "request"
            if name.lower() == IDEMPOTENCY_HEADER.lower():
                name = IDEMPOTENCY_HEADER
            fields.setdefault(name, "required" if error.get("type") == "missing" else str(error.get("msg")))
        return _problem(422, "invalid_request", "the request is invalid; nothing was written", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _problem(exc.status_code, error, str(exc.detail), headers=exc.headers)

    @app.exception_handler(ServiceUnavailable)
    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("intake_backend_unavailable", error=type(exc).__name__)
        return _problem(503, "unavailable", "the job store or the broker is unreachable; retry with the same "
                                            "Idempotency-Key", headers={"Retry-After": "5"})

    @app.middleware("http")
    async def _count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        counters.intake_requests.labels(getattr(route, "path", "unmatched"), request.method,
                                        str(response.status_code)).inc()
        return response

    # --- withdrawals ------------------------------------------------------------------------------

    def submit(raw: bytes, key: str, name: str) -> JSONResponse:
        errors: dict[str, str] = {}
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            counters.submissions.labels("invalid").inc()
            return _problem(422, "invalid_request", "the body must be a JSON object; nothing was written",
                            fields={"request": "must be a JSON object"})
        callback_url = data.pop("callback_url", None)
        # JSON has types the Python API's callers do not: money and the window must arrive as documented.
        if "quantity" in data and not isinstance(data["quantity"], str | None):
            errors["quantity"] = 'must be a decimal string such as "12.5", not a JSON number'
            data.pop("quantity")
        if "window" in data and (not isinstance(data["window"], int | None) or isinstance(data["window"], bool)):
            errors["window"] = "must be a whole number of milliseconds (a JSON integer)"
            data.pop("window")
        if "idempotency_key" in data:
            data.pop("idempotency_key")
            errors["idempotency_key"] = f"not a body field: send the {IDEMPOTENCY_HEADER} header"
        request: WithdrawalRequest | None = None
        try:
            request = parse_request({**data, "idempotency_key": key}, limits)
        except InvalidRequest as exc:
            for field, reason in exc.errors.items():
                errors.setdefault(IDEMPOTENCY_HEADER if field == "idempotency_key" else field, reason)
        if errors:
            request = None
        if callback_url is not None:
            problem = callbacks.url_problem(callback_url, settings.callback_allowed_hosts)
            if problem is None and name not in callback_names:
                problem = f"no callback secret is configured for token {name!r} (CALLBACK_SECRETS)"
            if problem is not None:
                errors["callback_url"] = problem
        if errors or request is None:
            counters.submissions.labels("invalid").inc()
            return _problem(422, "invalid_request", "the request is invalid; nothing was written", fields=errors)
        try:
            submission = submit_request(request, store=store(), submitted_by=name, callback_url=callback_url)
        except IdempotencyConflict as exc:  # the same key, another request (or token, or callback)
            counters.submissions.labels("conflict").inc()
            return _problem(409, "idempotency_conflict", str(exc), job_id=exc.job_id,
                            fields={field: "differs from the job's" for field in exc.fields})
        except ConfigurationError as exc:  # a two-factor token, and no BACKPACK_API_KEY to seal it with
            log.error("intake_misconfigured", error=str(exc))
            return _problem(503, "unavailable", "this service cannot seal two-factor tokens: BACKPACK_API_KEY "
                                                "is not set")
        record = store().require(submission.job_id)
        location = {"Location": f"/v1/withdrawals/{record.job_id}"}
        if submission.created:
            counters.submissions.labels("created").inc()
            log.info("intake_submitted", job_id=record.job_id, caller=name)
            return JSONResponse(record.model_dump(mode="json"), status_code=201, headers=location)
        counters.submissions.labels("replayed").inc()
        return JSONResponse(record.model_dump(mode="json"), status_code=200, headers=location)

    @app.post(
        "/v1/withdrawals", status_code=201, response_model=None, tags=["withdrawals"],
        dependencies=[Depends(_only_query())],
        summary="Submit a withdrawal",
        responses={
            201: {"model": JobRecord, "description": "A new job; `Location` names it."},
            200: {"model": JobRecord, "description": "The same key and request again: the same job, as it is now."},
            409: {"model": Problem, "description": "The key already names a job with another request."},
            413: {"model": Problem, "description": f"The body is larger than {BODY_MAX} bytes."},
            **_PROBLEMS,
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": WithdrawalSubmission.model_json_schema()}}}},
    )
    async def post_withdrawal(
        request: Request,
        name: Caller,
        # The pattern is documented, not enforced here: the key is checked with the body, so that one answer
        # names every bad field.
        key: Annotated[str, Header(alias=IDEMPOTENCY_HEADER, json_schema_extra={"pattern": r"^[A-Za-z0-9_-]{1,64}$"},
                                   description="The same key with the same request always answers with the same "
                                               "job; with another request, 409.")],
    ) -> Response:
        """Validate and enqueue one withdrawal. Nothing is written when the answer is not 201."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > BODY_MAX:
            return _problem(413, "too_large", f"the body must be at most {BODY_MAX} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_MAX:
                return _problem(413, "too_large", f"the body must be at most {BODY_MAX} bytes")
        return await run_in_threadpool(submit, raw, key, name)

    @app.get("/v1/withdrawals/{job_id}", response_model=JobRecord, tags=["withdrawals"], summary="Read a job",
             dependencies=[Depends(_only_query())],
             responses={404: {"model": Problem, "description": "No such job (or it ended past the retention)."},
                        **_PROBLEMS})
    def get_withdrawal(job_id: Annotated[str, Path(max_length=64)], _: Caller) -> Response:
        """The job record, as documented (the same as `bpx-worker status --json`)."""
        record = store().get(job_id)
        if record is None:
            return _problem(404, "not_found", f"no job {job_id}")
        return JSONResponse(record.model_dump(mode="json"))

    @app.get("/v1/withdrawals", response_model=JobPage, tags=["withdrawals"], summary="List jobs",
             responses=_PROBLEMS, dependencies=[Depends(_only_query("state", "batch", "limit", "cursor"))])
    def list_withdrawals(
        _: Caller,
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        batch: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Only jobs of this batch.")
                         ] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
        cursor: Annotated[str | None, Query(max_length=256, pattern=r"^[A-Za-z0-9_-]+$",
                                            description="`next_cursor` of the page before.")] = None,
    ) -> Response:
        """Jobs newest first. A page may hold fewer than `limit` jobs when a filter matches few; follow
        `next_cursor` until it is null."""
        try:
            page = store().page(cursor=decode_cursor(cursor) if cursor is not None else None, limit=limit,
                                state=state, batch_id=batch)
        except ValueError:
            return _problem(422, "invalid_request", "the request is invalid",
                            fields={"cursor": "not a cursor this service returned"})
        body = {"items": [r.model_dump(mode="json") for r in page.records],
                "next_cursor": encode_cursor(page.next_cursor)}
        return JSONResponse(body)

    # --- probes and metrics -----------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["probes"], summary="Alive")
    def healthz() -> Health:
        """The process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["probes"], summary="Ready",
             responses={503: {"model": Problem, "description": "Redis does not answer."}})
    def readyz() -> Response:
        """Redis answers, so submissions can be recorded."""
        try:
            probe.ping()
        except redis.RedisError as exc:
            log.warning("intake_not_ready", error=type(exc).__name__)
            return _problem(503, "unavailable", "Redis does not answer")
        return JSONResponse(Health(status="ready").model_dump())

    @app.get("/metrics", tags=["probes"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
    def get_metrics() -> Response:
        """The intake's counters and the queue, job and kill-switch gauges read from Redis."""
        payload, content_type = metrics.exposition(registry)
        return Response(payload, media_type=content_type)

    return app
