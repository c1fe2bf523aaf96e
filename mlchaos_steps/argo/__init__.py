"""Argo Workflows documents as data: the offline validator (``argo lint --offline`` without a cluster)
and the inserter that adds a chaos stage to workflow YAML a user already has.

Nothing here imports Hera: a user's YAML is edited as text at the places PyYAML's composer reports
(comments, quotes and layout stay), never round-tripped through Hera's models, which drop fields they do
not know. The Hera side, which renders the templates themselves, is :mod:`mlchaos_steps.hera`.
"""

from __future__ import annotations

from mlchaos_steps.argo.validate import Problem, validate_document, validate_files

__all__ = ["Problem", "validate_document", "validate_files"]
