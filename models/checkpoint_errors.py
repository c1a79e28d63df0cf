"""The one error every model file raises when it cannot be served, importable without torch."""


class CheckpointError(Exception):
    """Any reason a checkpoint cannot be used, with a message fit for a log line."""
