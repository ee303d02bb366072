"""Errors a user can cause. ``fracgen-train`` prints them as one line (``error: ...``) and exits 2."""


class TrainError(Exception):
    """An option, dataset, shard or checkpoint the user gave cannot be used; the message says what to change."""


class DoesNotFit(TrainError):
    """The dataset does not fit the device-memory budget of the resident source.

    With ``data.source: auto`` the caller logs the message and streams instead; with ``resident`` it is fatal.
    ``read`` holds the samples the resident source took from the dataset's one read before it gave up, so that the
    stream continues that read instead of starting another.
    """

    def __init__(self, message: str, read: list | None = None) -> None:
        super().__init__(message)
        self.read = read or []


class RankError(TrainError):
    """A fault one rank met alone (a damaged sample in the shards it streams): printed by that rank, whichever it is,
    since the others only see it leave (rank 0's collective then fails, and says so in one line)."""
