"""Errors a user can cause in models/: each message names the file (and line) at fault, in one line."""


class ModelError(Exception):
    """A model file is missing, unreadable, of the wrong shape or fails its checksum."""


class GalleryError(Exception):
    """A gallery data file, image or index directory is missing or malformed."""


class ModelNotFoundError(ModelError):
    """A model folder or file is not where it was looked for (as opposed to present but wrong)."""
