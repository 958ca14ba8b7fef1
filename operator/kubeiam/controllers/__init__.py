"""kopf handlers, one module per kind: read, decide with domain/, write."""
