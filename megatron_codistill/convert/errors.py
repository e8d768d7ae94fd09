"""The error every checkpoint check raises: user input that cannot be converted as given."""


class CheckpointError(ValueError):
    """A checkpoint (or output directory) that does not match what the conversion needs.

    Raised before anything is written; the message names the file or tensor, the value found and
    what would be valid.
    """
