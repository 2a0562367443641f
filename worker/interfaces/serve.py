"""`bpx-worker serve`: the HTTP intake on uvicorn, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import click

from bpx_worker import logs
from bpx_worker.errors import ConfigurationError
from bpx_worker.interfaces.common import redis_settings


@click.command()
@click.option("--host", help="Address to listen on (default INTAKE_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default INTAKE_PORT, 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Start the HTTP intake: submit and read withdrawals over HTTP (OpenAPI docs at /docs).

    Without a bearer token in INTAKE_TOKENS (or INTAKE_TOKENS_FILE) it refuses to
    start: the CLI turns the ConfigurationError into exit 78 naming the variable.
    """
    settings = redis_settings()  # an unset REDIS_URL is refused, as by every command run by hand
    if not settings.intake_token_secrets():
        raise ConfigurationError("INTAKE_TOKENS: not set (nor INTAKE_TOKENS_FILE): the intake refuses to start "
                                 "without a bearer token; set INTAKE_TOKENS=name=secret[,name=secret]")
    from bpx_worker.interfaces.http import create_app

    app = create_app(settings)

    import uvicorn

    logs.configure(settings.log_level, settings.log_format)
    # log_config=None: uvicorn's own records go through the same structlog pipeline as everything else.
    uvicorn.run(app, host=host or settings.intake_host, port=settings.intake_port if port is None else port,
                log_config=None, server_header=False)
