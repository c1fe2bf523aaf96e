"""Argo Workflows documents as data: the offline validator (``argo lint --offline`` without a cluster)
and the inserter that adds a chaos stage to workflow YAML a user already has.

Nothing here imports Hera: YAML is read and edited as plain data (ruamel.yaml keeps comments, quotes
and layout), so a user's document is never round-tripped through Hera's models, which drop fields they
do not know. The Hera side, which renders the templates themselves, is :mod:`mlchaos_steps.hera`.
"""

from __future__ import annotations

from mlchaos_steps.argo.validate import Problem, validate_document, validate_files

__all__ = ["Problem", "validate_document", "validate_files"]
