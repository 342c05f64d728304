"""The online state: each user's profile and newest events in Redis (written nightly, read per
call), the live events ingested between builds, and the nightly fold that moves them into the
dataset exactly once."""

from online.codec import CorruptStateError, UserRecord
from online.folding import fold
from online.users import Ingested, LiveEvent, UserStore

__all__ = ["CorruptStateError", "Ingested", "LiveEvent", "UserRecord", "UserStore", "fold"]
