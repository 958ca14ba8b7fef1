"""The group, version and plural names of kube-iam's kinds, as kopf and the clients address them."""

from kubeiam.api import GROUP, VERSION, FederationTrust, ServiceAccount, ServiceAccountCredential

__all__ = ["CREDENTIALS", "GROUP", "SERVICE_ACCOUNTS", "TRUSTS", "VERSION"]

SERVICE_ACCOUNTS = ServiceAccount.names.plural
CREDENTIALS = ServiceAccountCredential.names.plural
TRUSTS = FederationTrust.names.plural
