"""The shared vocabulary every layer depends on downwards: stage spec base, phase context, verdict,
ledger records and their statuses, and the small process and HTTP helpers stages share.

Layers, each importing only the ones below it::

    errors, config, redaction            (modules of the package root)
    core                                 (this package)
    targets, ledgers                     (what stages break; where runs are recorded)
    verification, stages                 (the four stage kinds and their shared spec parts)
    gate, engine                         (verdicts on model versions; the phase runner)
    api, airflow, hera, cli, demo, examples
"""
