"""Where faults land: local processes, checkpoint stores (fsspec); Kubernetes and MLflow come later."""
