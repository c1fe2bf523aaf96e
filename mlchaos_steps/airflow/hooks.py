"""The ``mlflow`` connection type: where the tracking server is, and its token."""

from __future__ import annotations

import os
from pathlib import Path
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


class KubernetesConnection(BaseHook):
    """Reads an Airflow connection of type ``kubernetes`` in the format of Airflow's cncf-kubernetes
    provider (its extras: ``in_cluster``, ``kube_config_path``, ``kube_config`` — the kubeconfig itself,
    YAML or JSON —, ``cluster_context``; with or without the ``extra__kubernetes__`` prefix) and points
    the stages of this task at it. The provider itself is not needed (nor registered again here)."""

    conn_name_attr = "kubernetes_conn_id"
    default_conn_name = "kubernetes_default"
    conn_type = "kubernetes"

    def __init__(self, kubernetes_conn_id: str = default_conn_name, **kwargs: Any):
        super().__init__(**kwargs)
        self.kubernetes_conn_id = kubernetes_conn_id

    def configure_environment(self) -> str:
        """Set ``KUBECONFIG`` for this task's process (a private copy when the connection holds the
        kubeconfig itself or names a context); unset it for ``in_cluster``. Returns what was chosen."""
        import tempfile

        import yaml

        conn = self.get_connection(self.kubernetes_conn_id)
        extra = conn.extra_dejson or {}

        def get(name: str) -> Any:
            return extra.get(name, extra.get(f"extra__kubernetes__{name}"))

        if str(get("in_cluster") or "").lower() in ("true", "1"):
            os.environ.pop("KUBECONFIG", None)
            return "in-cluster"
        inline, path, context = get("kube_config"), get("kube_config_path"), get("cluster_context")
        if not inline and not path:
            raise ValueError(f"connection {self.kubernetes_conn_id!r}: give kube_config_path, kube_config or "
                             "in_cluster in its extras")
        if not inline and not context:
            os.environ["KUBECONFIG"] = str(path)
            return str(path)
        document = inline if isinstance(inline, dict) else yaml.safe_load(inline or Path(path).read_text())
        if context:
            document["current-context"] = context
        handle, copy = tempfile.mkstemp(prefix="mlchaos-kubeconfig-", suffix=".yaml")  # 0600: it holds secrets
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(document, out)
        os.environ["KUBECONFIG"] = copy
        return f"connection {self.kubernetes_conn_id}" + (f", context {context}" if context else "")
