"""The few Kubernetes I/O helpers the controllers share."""
