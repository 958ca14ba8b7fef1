"""The API types of the three kinds; the CRD generator reads only these."""

from kubeiam.api.common import API_VERSION, GROUP, VERSION, Condition, ObjectMeta
from kubeiam.api.credential import (
    CredentialState,
    SecretDeletionPolicy,
    SecretKeys,
    SecretTemplate,
    ServiceAccountCredential,
    ServiceAccountCredentialSpec,
    ServiceAccountCredentialStatus,
)
from kubeiam.api.serviceaccount import (
    AccountState,
    Owner,
    Scope,
    ServiceAccount,
    ServiceAccountSpec,
    ServiceAccountStatus,
)
from kubeiam.api.trust import (
    FederationTrust,
    FederationTrustSpec,
    FederationTrustStatus,
    JsonWebKey,
    JsonWebKeySet,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "AccountState",
    "Condition",
    "CredentialState",
    "FederationTrust",
    "FederationTrustSpec",
    "FederationTrustStatus",
    "JsonWebKey",
    "JsonWebKeySet",
    "ObjectMeta",
    "Owner",
    "Scope",
    "SecretDeletionPolicy",
    "SecretKeys",
    "SecretTemplate",
    "ServiceAccount",
    "ServiceAccountCredential",
    "ServiceAccountCredentialSpec",
    "ServiceAccountCredentialStatus",
    "ServiceAccountSpec",
    "ServiceAccountStatus",
]
