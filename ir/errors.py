"""Errors optgraph reports to users as one line (the CLI maps them to exit code 2)."""


class OptGraphError(Exception):
    """Base class for errors with a message meant for the user."""


class InvalidModelError(OptGraphError):
    """The input is not a model optgraph can load: corrupt, unsafe, or structurally broken."""


class VerificationError(OptGraphError):
    """The IR broke one of its invariants (single assignment, order, use lists)."""
