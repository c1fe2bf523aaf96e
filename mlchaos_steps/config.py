"""Where mlchaos keeps its state, and the switches that stop it."""

from __future__ import annotations

import os
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


def allowed_paths() -> list[Path]:
    """Optional allowlist of roots for checkpoint stores: ``MLCHAOS_ALLOWED_PATHS`` (os.pathsep-separated)."""
    raw = os.environ.get("MLCHAOS_ALLOWED_PATHS", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


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
