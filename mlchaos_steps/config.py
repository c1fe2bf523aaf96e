"""Where mlchaos keeps its state, and the switches that stop it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

STOP_FILE_NAME = "STOP"


def home() -> Path:
    """The state folder: ``$MLCHAOS_HOME``, default ``~/.mlchaos``. Created on first use."""
    path = Path(os.environ.get("MLCHAOS_HOME") or Path.home() / ".mlchaos").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def stop_file() -> Path:
    """Touch this file to stop every running stage within a second (the kill switch)."""
    return home() / STOP_FILE_NAME


def kill_switch_reason() -> str | None:
    """Why chaos is switched off right now, or None when it may run."""
    if os.environ.get("MLCHAOS_DISABLED", "").strip().lower() in {"1", "true", "yes", "on"}:
        return "MLCHAOS_DISABLED is set"
    if stop_file().exists():
        return f"stop file {stop_file()} exists (delete it to allow chaos again)"
    return None


@dataclass(frozen=True)
class Allowlist:
    """Where checkpoint stores may be: local folders (real paths) and URL prefixes (``s3://bucket/x``)."""

    paths: tuple[Path, ...]
    urls: tuple[str, ...]


def allowed_paths() -> Allowlist | None:
    """The allowlist ``MLCHAOS_ALLOWED_PATHS`` (os.pathsep-separated; URL prefixes may be listed too, e.g.
    ``s3://bucket/checkpoints``, separated by commas), or None when it is not set. Set but empty (``""``,
    ``:``, blanks) allows nothing: an allowlist that was meant to restrict never turns into no restriction."""
    raw = os.environ.get("MLCHAOS_ALLOWED_PATHS")
    if raw is None:
        return None
    entries = [e.strip() for part in raw.split(",") for e in _split_paths(part) if e.strip()]
    urls = tuple(e.rstrip("/") for e in entries if "://" in e and not e.startswith("file://"))
    paths = tuple(Path(e.removeprefix("file://")).expanduser().resolve() for e in entries
                  if "://" not in e or e.startswith("file://"))
    return Allowlist(paths, urls)


def _split_paths(value: str) -> list[str]:
    # "s3://b/x" holds ':' too: split on os.pathsep only where it does not start "://".
    parts, current = [], ""
    for i, char in enumerate(value):
        if char == os.pathsep and not value.startswith("//", i + 1):
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def pipeline_name() -> str:
    """The pipeline this process runs in, for labels: ``MLCHAOS_PIPELINE``, else the Airflow DAG, else the
    Argo workflow's name without the random suffix ``generateName`` adds; ``none`` outside a pipeline."""
    env = os.environ
    argo = env.get("ARGO_WORKFLOW_NAME") or env.get("MLCHAOS_WORKFLOW_NAME") or ""
    return (env.get("MLCHAOS_PIPELINE") or env.get("AIRFLOW_CTX_DAG_ID")
            or re.sub(r"-[a-z0-9]{5}$", "", argo) or "none")


def configure_airflow_home(home: Path, dags_folder: Path | None = None) -> None:
    """Set the environment for an embedded Airflow; call before anything imports airflow."""
    home.mkdir(parents=True, exist_ok=True)
    dags = dags_folder or home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
