"""`make bench`: kube-iam's figures beside the API server's own floor, measured in one run."""
