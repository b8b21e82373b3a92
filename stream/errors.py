"""Errors a user can cause in stream/: each message names the input, file or address at fault, in one line."""


class SourceError(Exception):
    """A video/image source cannot be opened or decoded (missing, not a video, truncated)."""


class SinkError(Exception):
    """A result sink cannot be reached or written (Kafka/Redis address, output file)."""
