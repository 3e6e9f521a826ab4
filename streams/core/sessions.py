"""Sessions as GA4 reports them: one channel and campaign per session, decided at its start.

Site events (page views, engagement, leads, clicks on the site) belong to a session: the
client's ``session_id`` when the event carries one, else a session derived from the subject
(user, else anonymous id) the way GA4 does it server-side: a new session after
``timeout_seconds`` of inactivity, by event time, or when an event brings a new campaign touch.
A session takes the channel and campaign of the event that starts it, and every later event of
the session is attributed to them, so each session counts once, in one channel.

This module is the rule; the per-subject state lives with the raw partition that owns the
subject (``streams.core.subject_state``), journaled with each flush, so a message read again
after a crash meets the state as it was before the message (never after), and placing is
replay-safe without remembering which message started a session.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from streams.contracts.journal import Session
from streams.core.attribution import Attribution

#: A subject's sessions kept (the newest by start): a late event older than all of them
#: starts a session of its own.
KEPT_SESSIONS = 16


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """What placing a site event in its session needs to know of it."""

    #: Where its state lives: ``s:<pseudonymized subject>`` (all of a subject's sessions), or
    #: ``c:<pseudonymized session_id>`` for an event of no known subject.
    key: str
    at: float
    #: The event's own channel and campaign, by the rules.
    attribution: Attribution
    #: Whether it carries a touch: a utm source, medium or campaign, or an external referrer.
    touched: bool
    #: Its pseudonymized ``session_id``; empty when the session is to be derived.
    client: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """The session an event belongs to: its channel and campaign, and whether this event
    starts it (the session is counted with this event, in this event's windows)."""

    channel: str
    campaign: str
    started: bool

    @property
    def attribution(self) -> Attribution:
        return Attribution(self.channel, self.campaign, "session")


SessionState = tuple[Session, ...]


def place(state: SessionState, event: SessionEvent, timeout_seconds: float) -> tuple[Placement, SessionState]:
    """The session ``event`` belongs to, and the state after it."""
    if event.client:
        return _place_in_client_session(state, event, timeout_seconds)
    index = _containing(state, event.at, timeout_seconds)
    if index is None:
        return _started(event, state)
    session = state[index]
    own = event.attribution
    new_touch = event.touched and (own.channel, own.campaign) != (session.channel, session.campaign)
    if new_touch and event.at >= session.last_at:
        return _started(event, state)
    joined = _extended(session, event.at)
    return Placement(joined.channel, joined.campaign, False), (*state[:index], joined, *state[index + 1 :])


def _place_in_client_session(
    state: SessionState, event: SessionEvent, timeout_seconds: float
) -> tuple[Placement, SessionState]:
    """The client's session by its id; a derived session the event falls in is that same
    session, seen first through an event without the id (either may be read first)."""
    # At most one session holds a client id (it is only given to a session when none has
    # it); the newest ones are searched first, as an event most often continues one of them.
    client = event.client
    index = next((i for i in range(len(state) - 1, -1, -1) if state[i].client == client), None)
    if index is None:
        derived = tuple(s if not s.client else None for s in state)
        index = _containing(derived, event.at, timeout_seconds)
        if index is None:
            return _started(event, state)
    session = msgspec.structs.replace(_extended(state[index], event.at), client=event.client)
    return Placement(session.channel, session.campaign, False), (*state[:index], session, *state[index + 1 :])


def _started(event: SessionEvent, state: SessionState) -> tuple[Placement, SessionState]:
    own = event.attribution
    session = Session(event.at, event.at, own.channel, own.campaign, event.client)
    kept = sorted((*state, session), key=lambda s: s.first_at)[-KEPT_SESSIONS:]
    return Placement(own.channel, own.campaign, True), tuple(kept)


def _extended(session: Session, at: float) -> Session:
    if session.first_at <= at <= session.last_at:
        return session
    return msgspec.structs.replace(
        session, first_at=min(session.first_at, at), last_at=max(session.last_at, at)
    )


def _containing(state: tuple[Session | None, ...], at: float, timeout_seconds: float) -> int | None:
    """The session an event at ``at`` continues: of those it is within ``timeout_seconds``
    of, the latest that started at or before it, else the earliest (None: not a candidate)."""
    near = [
        i
        for i, s in enumerate(state)
        if s is not None and s.first_at - timeout_seconds <= at <= s.last_at + timeout_seconds
    ]
    if not near:
        return None
    before = [i for i in near if (s := state[i]) is not None and s.first_at <= at]
    return before[-1] if before else near[0]
