"""The workflow documents shipped with the worker, loaded once.

`config/workflows/arazzo/` holds the seed Arazzo document exactly as published;
`config/workflows/openapi/` the Backpack OpenAPI description it names by the
relative URL `../openapi/backpack-exchange-openapi.yml`. `worker-additions.yml`
is the JSON Patch (RFC 6902) the worker applies to the seed; docs/configuration.md
("What differs from the seed workflow") lists each change and why.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

WORKFLOWS_DIR = Path(__file__).resolve().parent / "workflows"
SEED_WORKFLOW = WORKFLOWS_DIR / "arazzo" / "backpack-balance-checked-withdrawal-workflow.yml"
WORKER_ADDITIONS = WORKFLOWS_DIR / "worker-additions.yml"

# libyaml's C loader parses the 400 KB OpenAPI file about ten times faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def load_yaml(path: Path) -> Any:
    with open(path, "rb") as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader (C or Python)


def openapi_enum(schema: str, openapi_path: Path | None = None) -> frozenset[str]:
    """The values of an enum schema in the OpenAPI description, e.g. `Blockchain`."""
    path = openapi_path or WORKFLOWS_DIR / "openapi" / "backpack-exchange-openapi.yml"
    return frozenset(load_yaml(path)["components"]["schemas"][schema]["enum"])


def blockchain_names() -> frozenset[str]:
    return openapi_enum("Blockchain")


def custody_assets() -> frozenset[str]:
    return openapi_enum("CustodyAsset")
