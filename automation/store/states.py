"""What state a launch or a delivery can be in, and which states mean what.

Plain enums and tuples, no SQLAlchemy: the metrics counters, the CLI's `--help` and the
models all read them from here, so a status set is defined once (which statuses a
cooldown counts, which are settled, which an operator may retry or cancel, which
retention may prune).
"""

from __future__ import annotations

import enum


class LaunchStatus(enum.StrEnum):
    """Where a launch is in its life (the interface contract of design.md)."""

    #: Stored, waiting for `not_before` and a free request slot.
    PENDING = "pending"
    #: Claimed by a dispatcher; its API call is being made.
    SENDING = "sending"
    #: amoCRM accepted the batch it was in.
    SENT = "sent"
    #: Gave up: amoCRM rejected it, or the retry budget ran out.
    FAILED = "failed"
    #: The request may have reached amoCRM but no answer came; not resent by default.
    UNCERTAIN = "uncertain"
    #: Recorded as if sent, because the server runs in dry-run mode.
    DRY_RUN = "dry_run"
    #: Cancelled by an operator before it was sent.
    CANCELLED = "cancelled"
    #: Never sent, by design: a rule's cooldown, or another bot on the same chat
    #: (one_bot_per_chat), suppressed it (see `reason`).
    SKIPPED = "skipped"


class DeliveryStatus(enum.StrEnum):
    """Whether we understood a stored webhook."""

    #: At least one event of a known type.
    ACCEPTED = "accepted"
    #: Only unknown groups: stored so it can be replayed once we understand it.
    UNRECOGNIZED = "unrecognized"
    #: A large body stored raw and answered at once; a dispatcher expands its launches
    #: right after (`store.queue`), then it becomes `accepted` or `unrecognized`.
    QUEUED = "queued"
    #: A queued body that turned out not to decode: no launches, its error recorded.
    REJECTED = "rejected"


#: The final statuses a dispatcher brings launches to (the settled-launches counter).
SETTLED = (
    LaunchStatus.SENT,
    LaunchStatus.FAILED,
    LaunchStatus.UNCERTAIN,
    LaunchStatus.DRY_RUN,
)
#: Launches that count for a cooldown: the bot ran, or is about to.
COOLDOWN = (
    LaunchStatus.PENDING,
    LaunchStatus.SENDING,
    LaunchStatus.SENT,
    LaunchStatus.UNCERTAIN,
    LaunchStatus.DRY_RUN,
)
#: Settled launches that never reached a customer for sure: an operator may resend them.
RETRYABLE = (LaunchStatus.FAILED, LaunchStatus.UNCERTAIN, LaunchStatus.CANCELLED)
#: Launches no dispatcher holds yet: an operator may still cancel them.
CANCELLABLE = (LaunchStatus.PENDING,)
#: Settled launches that no cooldown looks at: retention prunes them once old enough.
UNCOUNTED = (LaunchStatus.FAILED, LaunchStatus.CANCELLED, LaunchStatus.SKIPPED)
#: Settled launches a cooldown counts (see `COOLDOWN`): kept for the longest cooldown.
COUNTED = (LaunchStatus.SENT, LaunchStatus.DRY_RUN)
#: Never pruned: still on their way, or waiting for an operator's decision.
KEPT = (LaunchStatus.PENDING, LaunchStatus.SENDING, LaunchStatus.UNCERTAIN)
