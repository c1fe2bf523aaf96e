"""mlchaos-steps: chaos stages for ML pipelines.

Break one thing on purpose, verify that the system recovered the way its owners claim, and gate
model promotion on the verdict. The package root stays import-light: front doors live in
``mlchaos_steps.stages``, ``mlchaos_steps.api``, ``mlchaos_steps.airflow`` and ``mlchaos_steps.cli``.
"""

__version__ = "0.1.0"
