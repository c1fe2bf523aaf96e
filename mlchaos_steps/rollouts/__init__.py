"""A reference rollback mechanism for canaries, modelled on Argo Rollouts' AnalysisTemplate.

``router`` splits traffic between a stable and a canary model server by weight, measures each
backend, and runs a canary analysis (interval, count, success condition on error rate and latency,
failureLimit, inconclusiveLimit). When the analysis fails it aborts: 100% of traffic back to stable,
the canary stopped, the candidate version tagged ``mlchaos.rollout=rejected``. The router also has a
fault filter (errors, latency), the way a service mesh injects faults, for the canary-failure stage.
Adopt it, or point the stage at your own mechanism's equivalent.
"""
