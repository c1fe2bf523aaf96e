"""Argo Workflows through Hera (the only package that imports Hera): the ``mlchaos-steps`` templates,
``chaos_stage`` for workflows written in Hera, and ``add_chaos`` to insert a stage into one.

Example::

    from hera.workflows import DAG, Workflow
    from mlchaos_steps.hera import chaos_stage

    with Workflow(generate_name="retrain-", entrypoint="main") as w:
        with DAG(name="main"):
            train = ...
            wipe = chaos_stage("wipe", "dags/stages/checkpoint_wipe.yaml")
            train >> wipe
"""

from __future__ import annotations

from mlchaos_steps.hera.library import janitor, library, render_library, templates
from mlchaos_steps.hera.stage import add_chaos, chaos_stage, gate

__all__ = ["add_chaos", "chaos_stage", "gate", "janitor", "library", "render_library", "templates"]
