"""The service's errors, one tree; foreign errors are translated at each adapter's edge.

PollerError
+-- InvalidRequest        the caller asked for something we will not do (4xx)
|   +-- UnknownCluster
+-- RequestNotFound       no such request_id (404)
+-- RequestConflict       request_id taken, or the request already ended (409)
|   +-- DriverTaken       another active request already tracks that driver
+-- SparkError
|   +-- SparkUnavailable  transient: connection failed, timed out, 5xx (retry later)
|   +-- SparkRejected     Spark answered and said no (bad job, auth, ...)
+-- StoreUnavailable      the database is unreachable (transient)
|   +-- SchemaMismatch    its schema is not this version's (behind or ahead): not transient
+-- PublishFailed         Kafka did not confirm the event (transient)
+-- LeaseLost             another process leads now: its decision, not ours
+-- ConfigMismatch        the configuration contradicts what the store holds (start refused)
+-- ReplicaIdInUse        another live process goes by this one's replica id (it waits)
"""

from __future__ import annotations


class PollerError(Exception):
    """Base of every error this service raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(PollerError):
    pass


class InvalidRequest(PollerError):
    pass


class UnknownCluster(InvalidRequest):
    pass


class RequestNotFound(PollerError):
    pass


class RequestConflict(PollerError):
    pass


class DriverTaken(RequestConflict):
    """The driver is already tracked by another request on its cluster that is not done."""

    def __init__(self, message: str, tracking_request_id: str) -> None:
        super().__init__(message)
        self.tracking_request_id = tracking_request_id


class SparkError(PollerError):
    pass


class SparkUnavailable(SparkError):
    """Spark was unreachable or failed; ``maybe_applied`` if the call may still have landed."""

    def __init__(self, message: str, *, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class SparkRejected(SparkError):
    """Spark answered and refused; ``status_code`` is its HTTP status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class SubmissionUnknown(PollerError):
    pass


class StoreUnavailable(PollerError):
    pass


class SchemaMismatch(StoreUnavailable):
    """The database is at revision ``current`` (None: not versioned yet), this version needs
    ``head``: unusable until someone migrates it, so it is refused rather than half-used."""

    def __init__(self, message: str, current: str | None = None, head: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.head = head


class PublishFailed(PollerError):
    pass


class LeaseLost(PollerError):
    """This process no longer holds the scheduler lease: whatever it was about to decide for
    the leader is left to the one that holds it now."""


class ConfigMismatch(PollerError):
    """The configuration contradicts what the store holds (a changed shard count with requests
    in flight): the start is refused rather than the requests mislaid."""


class ReplicaIdInUse(PollerError):
    """Another live process goes by this one's replica id: the replicas would be counted as one
    when sharing the shards, so this one takes none until the other has gone."""
