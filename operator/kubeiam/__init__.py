"""kube-iam: a Kubernetes operator that makes a cluster an identity provider for machines."""
