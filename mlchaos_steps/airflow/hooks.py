"""The ``mlflow`` connection type: where the tracking server is, and its token."""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook


class MlflowHook(BaseHook):
    """Reads an Airflow connection of type ``mlflow`` (host = tracking URI, password = token)."""

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any):
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "extra"],
            "relabeling": {"host": "Tracking URI", "login": "Username", "password": "Token or password"},
            "placeholders": {"host": "http://mlflow.example:5000"},
        }

    def configure_environment(self) -> str:
        """Set MLFLOW_TRACKING_URI (and credentials) for this task's process; return the URI."""
        conn = self.get_connection(self.mlflow_conn_id)
        uri = conn.host or ""
        if conn.port and "://" in uri and uri.count(":") < 2:
            uri = f"{uri}:{conn.port}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        if conn.login:
            os.environ["MLFLOW_TRACKING_USERNAME"] = conn.login
        if conn.password:
            key = "MLFLOW_TRACKING_PASSWORD" if conn.login else "MLFLOW_TRACKING_TOKEN"
            os.environ[key] = conn.password
        return uri
