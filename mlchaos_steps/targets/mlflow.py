"""MLflow: the tracking server and model registry, and the artifact stores behind model versions.

The tracking URI is ``MLFLOW_TRACKING_URI``, else the embedded default
``sqlite:///<MLCHAOS_HOME>/mlflow.db`` with artifacts under ``<MLCHAOS_HOME>/mlartifacts``.
mlflow is imported inside functions, never at module import.
"""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from typing import Any

from mlchaos_steps import config
from mlchaos_steps.core.records import ModelRef
from mlchaos_steps.errors import InfrastructureError, SpecError
from mlchaos_steps.targets.files import copy_with_digest, file_digest

# Files MLflow itself writes on load, or that describe the environment rather than the model.
MLFLOW_WRITES_ON_LOAD = {"registered_model_meta"}
NOT_WEIGHTS = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
               "serving_input_example.json", "registered_model_meta", "python_model.pkl"}


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{config.home() / 'mlflow.db'}"


@lru_cache(maxsize=8)
def _client(uri: str, registry_uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=registry_uri)


# A chaos run must learn quickly that the server is down (MLflow's defaults retry for minutes);
# a user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                 # the CLI's standard output is JSON or a table: no "View run" links in it
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def client() -> Any:
    """An ``MlflowClient`` for the configured tracking server and registry."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return _client(tracking_uri(), os.environ.get("MLFLOW_REGISTRY_URI"))


def experiment_id(name: str) -> str:
    """The id of an experiment, created on first use (artifacts under MLCHAOS_HOME when embedded)."""
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = (config.home() / "mlartifacts").as_uri() if tracking_uri().startswith("sqlite:") else None
    try:
        return str(c.create_experiment(name, artifact_location=location))
    except Exception:  # created meanwhile by a concurrent process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


# Error codes by which MLflow answers "no such thing": the stores say RESOURCE_DOES_NOT_EXIST; the REST
# server answers a missing alias with INVALID_PARAMETER_VALUE ("Registered model alias ... not found").
NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def is_not_found(exc: BaseException) -> bool:
    """Whether MLflow answered that the thing does not exist (its error code says so). Anything else --
    a server that cannot be reached (``INTERNAL_ERROR``), a 5xx, a refused token -- is not an answer
    about the thing, and callers treat it as an infrastructure error (fail closed)."""
    return getattr(exc, "error_code", None) in NOT_FOUND


def resolve_version(name: str, version: str, field: str = "spec.version") -> ModelRef:
    """Turn a number or ``@alias`` into an exact version; bad input raises SpecError (exit 2)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        if str(version).startswith("@"):
            mv = c.get_model_version_by_alias(name, str(version)[1:])
        else:
            if not str(version).isdigit():
                raise SpecError(field, f"{version!r} is neither a version number nor an @alias")
            mv = c.get_model_version(name, str(version))
    except MlflowException as exc:
        if not is_not_found(exc):
            raise InfrastructureError(f"the MLflow tracking server at {tracking_uri()} did not answer: {exc}") from exc
        try:
            c.get_registered_model(name)
        except MlflowException as missing:
            if not is_not_found(missing):
                raise InfrastructureError(f"the MLflow tracking server at {tracking_uri()} did not answer: "
                                          f"{missing}") from missing
            raise SpecError("spec.model", f"registered model {name!r} does not exist in {tracking_uri()}: "
                                          "check the name (mlflow models are case-sensitive)") from None
        raise SpecError(field, f"model {name!r} has no version {version!r}: give an existing version number or "
                               "alias") from None
    return ModelRef(name, str(mv.version))


def alias_version(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        return None


# -- artifacts behind a model version ---------------------------------------------------------------
class ArtifactStore:
    """The artifacts of one model version, wherever they live.

    fsspec-capable locations (``file://``, ``s3://``, ...) are handled as file systems; others
    (``mlflow-artifacts:/`` behind a tracking server) through MLflow's artifact repository.
    """

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs: Any = None
        scheme = uri.split(":", 1)[0] if ":" in uri else "file"
        if scheme in ("file", "s3", "gs", "gcs", "az", "abfs", "memory"):
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        else:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            self.repo = get_artifact_repository(self.uri)

    def list(self) -> dict[str, int]:
        """Relative path -> size of every file (MLflow's own on-load files left out)."""
        if self.fs is not None:
            if not self.fs.exists(self.root):
                return {}
            out = {}
            for path, info in self.fs.find(self.root, detail=True).items():
                rel = posixpath.relpath(path, self.root)
                if posixpath.basename(rel) not in MLFLOW_WRITES_ON_LOAD:
                    out[rel] = int(info.get("size") or 0)
            return out
        found: dict[str, int] = {}
        stack = [None]
        while stack:
            for info in self.repo.list_artifacts(stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                elif posixpath.basename(info.path) not in MLFLOW_WRITES_ON_LOAD:
                    found[info.path] = int(info.file_size or 0)
        return found

    def backup(self, rel: str, local_path: str) -> tuple[str, int]:
        """Copy one artifact file to a local path; return (sha256, bytes)."""
        import fsspec

        local = fsspec.filesystem("file")
        local.makedirs(posixpath.dirname(local_path), exist_ok=True)
        if self.fs is not None:
            return copy_with_digest(self.fs, posixpath.join(self.root, rel), local, local_path)
        downloaded = self._download(rel, posixpath.dirname(local_path) + "/.dl")
        os.replace(downloaded, local_path)
        return file_digest(local, local_path), os.path.getsize(local_path)

    def _download(self, rel: str, folder: str) -> str:
        """One artifact through MLflow's repository (proxied ``mlflow-artifacts:`` stores); MLflow wants
        the destination folder to exist."""
        os.makedirs(folder, exist_ok=True)
        return str(self.repo.download_artifacts(rel, dst_path=folder))

    def upload(self, local_path: str, rel: str) -> str:
        """Put one file back; return the sha256 of what now lies in the store."""
        import fsspec

        local = fsspec.filesystem("file")
        if self.fs is not None:
            target = posixpath.join(self.root, rel)
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            return copy_with_digest(local, local_path, self.fs, target)[0]  # the digest of the bytes written
        parent = posixpath.dirname(rel) or None
        self.repo.log_artifact(local_path, parent)
        check = self._download(rel, posixpath.dirname(local_path) + "/.verify")
        digest = file_digest(local, check)
        os.remove(check)
        return digest

    def delete(self, rel: str | None) -> None:
        """Delete one file, or everything when ``rel`` is None."""
        if self.fs is not None:
            target = posixpath.join(self.root, rel) if rel else self.root
            if self.fs.exists(target):
                self.fs.rm(target, recursive=rel is None)
            return
        self.repo.delete_artifacts(rel)


def version_artifacts(ref: ModelRef) -> ArtifactStore:
    return ArtifactStore(client().get_model_version_download_uri(ref.name, ref.version))


def weights_only(files: dict[str, int]) -> dict[str, int]:
    """The model's data files: not MLmodel, the environment files, the pyfunc wrapper or ``code/``."""
    return {rel: size for rel, size in files.items()
            if posixpath.basename(rel) not in NOT_WEIGHTS and not rel.startswith("code/")}
