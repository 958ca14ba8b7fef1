"""OIDC federation: issuer discovery and keys, CEL conditions, token checks."""
