"""The token service (`kube-iam token-server`): a credential's client secret becomes a signed
access token. A process of its own beside the operator, not a kopf operator."""
