"""Pure rules of kube-iam: no I/O, no kopf, no Kubernetes client."""
