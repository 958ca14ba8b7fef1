"""The one error type the local control plane raises, carrying a message for a person."""


class ControlPlaneError(RuntimeError):
    """The local control plane could not be built, started or reached; the message says why."""
