"""Reading the Dockerfile, .dockerignore and docker-compose.yml the way Docker would, for tests that run
where no Docker engine does.

Only what this repository's files use is supported: stages (`FROM image AS name`), line continuations,
comment lines, `COPY src... dest` from the build context, `RUN` with `--mount` flags, and .dockerignore
patterns with `*`, `?`, `**` and `!` (a pattern that matches a folder excludes what is inside it).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV...
    arguments: str  # the rest of the instruction, continuations joined


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction of this stage, in order."""
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def workdir(self) -> str:
        """The stage's last WORKDIR (what relative COPY destinations and RUN commands start from)."""
        dirs = self.all("WORKDIR")
        return dirs[-1] if dirs else "/"


@dataclass(frozen=True)
class PipCommand:
    """One `pip ...` invocation of a RUN instruction."""

    verb: str  # install, wheel
    options: dict[str, str | None]  # --find-links -> /wheels, --no-index -> None
    targets: list[str]  # requirement specifiers and paths
    mounts: list[dict[str, str]]  # the RUN instruction's --mount flags


def _logical_lines(text: str) -> list[str]:
    """Instructions as single lines: comment lines dropped (also inside a continuation), `\\` joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    """The Dockerfile's stages in order; instructions before the first FROM (global ARGs) are dropped."""
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


def stages_by_name(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages of the repository's Dockerfile by name."""
    return {stage.name: stage for stage in parse_dockerfile(path.read_text())}


def pip_commands(stage: Stage) -> list[PipCommand]:
    """Every `pip` invocation in the stage's RUN instructions (commands joined with && split apart)."""
    found: list[PipCommand] = []
    for arguments in stage.all("RUN"):
        words = shlex.split(arguments)
        mounts = []
        while words and words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--mount="):
                mounts.append(dict(item.split("=", 1) for item in flag[len("--mount="):].split(",")))
        command: list[str] = []
        for word in [*words, "&&"]:
            if word not in ("&&", ";"):
                command.append(word)
                continue
            if command[:1] == ["pip"] or command[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                found.append(_pip_command(command[command.index("pip") + 1:], mounts))
            command = []
    return found


_PIP_FLAGS = {"--no-index", "--no-deps", "--no-cache-dir", "--no-build-isolation", "--upgrade", "-U", "--user",
              "--disable-pip-version-check", "--quiet", "-q", "-e", "--editable"}


def _pip_command(words: list[str], mounts: list[dict[str, str]]) -> PipCommand:
    verb, *rest = words
    options: dict[str, str | None] = {}
    targets: list[str] = []
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            if eq:
                options[name] = value
            elif name in _PIP_FLAGS:
                options[name] = None
            else:
                options[name] = rest.pop(0)
        else:
            targets.append(word)
    return PipCommand(verb=verb, options=options, targets=targets, mounts=mounts)


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (COPY --from=... left out)."""
    copies = []
    for arguments in stage.all("COPY"):
        words = shlex.split(arguments)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        copies.append((words[:-1], words[-1]))
    return copies


# --- .dockerignore -------------------------------------------------------------------------------------

def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    """The patterns of a .dockerignore, in order (comments and blank lines dropped)."""
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = pattern.strip("/").split("/")
    regex = ""
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        regex += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
        if not last:
            regex += "/"
    return re.compile(regex + r"\Z")


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, `/`-separated) out of the build context: the last pattern
    that matches the path or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negated else pattern)
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


# --- docker-compose.yml --------------------------------------------------------------------------------

def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml as compose reads it before interpolation (YAML merge keys resolved)."""
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded
