"""The herald: job status from the event bus to chat, calmly and within the rate limits.

Routing: a job's milestones (created, started, completed, needs attention, cancelled) go to a
channel: the one ``routes`` names for its type, else the channel it was started from in chat,
else ``default_channel``. A job started from chat also has a thread (its ``job.created`` event
carries ``metadata={"chat": {"provider", "channel", "thread"}}``) that gets the milestones,
every step and gate, and, for a job set ``verbose``, its live output.

Rates: every send and edit spends the budget of its destination (a channel or a thread):
``rate.messages`` per ``rate.per_s``. An update that finds no budget waits; a newer update for
the same job and destination replaces it (``dropped`` counts those), and when the budget
returns it is delivered by editing the job's status message there instead of adding one. The
latest state therefore always arrives, and a burst of events costs a few messages.

The herald never slows a job: reading the bus never waits on chat (a separate task sends),
pending updates are bounded by ``queue_size``, and a subscription the bus dropped is replaced
and the gap re-read from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from stitchwork.bus.base import EventBus, EventFilter, Subscription, SubscriptionClosed
from stitchwork.clock import Clock, SystemClock
from stitchwork.domain.chat_status import (
    MAX_TEXT,
    OUTPUT_CHARS,
    JobView,
    folded_text,
    output_text,
    render,
)
from stitchwork.domain.events import Event
from stitchwork.errors import ConfigError
from stitchwork.storage.jobs import SqlJobStore

if TYPE_CHECKING:  # the port is only named in annotations: runtime does not import chat
    from stitchwork.chat.base import ChatProvider, MessageRef

__all__ = ["ChatRate", "Herald"]

log = structlog.get_logger(__name__)

TYPES = ("job.*", "step.*", "gate.*")
MAX_JOBS = 10_000  # jobs remembered (routes, status messages); the oldest are forgotten
MAX_WAIT_S = 0.25  # a blocked sender looks at the clock again at least this often
MAX_TRIES = 3  # a send the provider refused is tried this often before it is dropped
MAX_LINES = 20  # status lines waiting per job and destination; older ones are folded
CATCH_UP_LIMIT = 50_000  # events re-read after a dropped subscription, at most
RESUBSCRIBE_MAX_S = 5.0

Dest = tuple[str, str]  # ("channel" | "thread", id): one rate budget each
SlotKey = tuple[Dest, UUID, str]  # destination, job, "status" | "output"


@dataclass(frozen=True, slots=True)
class ChatRate:
    """At most ``messages`` sends or edits per ``per_s`` seconds per channel or thread
    (Discord's limit by default)."""

    messages: int = 5
    per_s: float = 5.0

    def __post_init__(self) -> None:
        if self.messages < 1 or not self.per_s > 0:
            raise ConfigError(
                f"a chat rate needs at least 1 message per a positive number of seconds, "
                f"got {self.messages} per {self.per_s} s",
                field="chat_rate",
            )


class _Budget:
    """A sliding window of the calls made to one destination."""

    __slots__ = ("calls", "rate")

    def __init__(self, rate: ChatRate) -> None:
        self.rate = rate
        self.calls: deque[float] = deque()

    def wait_s(self, now: float) -> float:
        """0 when a call may be made now, else how long until one may."""
        while self.calls and now - self.calls[0] >= self.rate.per_s:
            self.calls.popleft()
        if len(self.calls) < self.rate.messages:
            return 0.0
        return self.rate.per_s - (now - self.calls[0])


@dataclass(slots=True)
class _Update:
    """What waits to be said for one job at one destination: status lines, or output."""

    lines: list[str]
    final: bool = False
    folded: int = 0  # earlier lines left out
    blocked: bool = False  # waited for the budget: goes out as an edit of the status message
    tries: int = 0


class Herald:
    """Posts job status to chat. ``run()`` until cancelled; the bridge calls ``verbose`` and
    ``quiet``. Counters: ``dropped`` (updates replaced by newer ones or refused by the bound),
    ``resubscribes``, ``recovered`` (events missed on the bus, re-read from the database) and
    ``failed_sends``."""

    def __init__(
        self,
        bus: EventBus,
        store: SqlJobStore,
        provider: ChatProvider,
        *,
        routes: Mapping[str, str],
        default_channel: str | None,
        rate: ChatRate = ChatRate(),
        clock: Clock = SystemClock(),
        queue_size: int = 1000,
    ) -> None:
        if queue_size < 1:
            raise ConfigError("the herald's queue_size must be at least 1", field="queue_size")
        self._bus = bus
        self._store = store
        self._provider = provider
        self._routes = dict(routes)
        self._default_channel = default_channel
        self._rate = rate
        self._clock = clock
        self._queue_size = queue_size
        self.dropped = 0
        self.resubscribes = 0
        self.recovered = 0
        self.failed_sends = 0
        self.ready = asyncio.Event()  # set once subscribed: events from then on are seen
        self._jobs: OrderedDict[UUID, JobView] = OrderedDict()
        # The latest message per job, destination and kind: the one an update over budget edits
        self._refs: dict[UUID, dict[tuple[Dest, str], MessageRef]] = {}
        self._verbose: set[UUID] = set()
        self._pending: OrderedDict[SlotKey, _Update] = OrderedDict()
        self._size = 0  # lines in _pending, at most queue_size
        self._budgets: dict[Dest, _Budget] = {}
        self._wake = asyncio.Event()
        self._last_id = 0

    # -- controls ---------------------------------------------------------------------------

    def verbose(self, job_id: UUID, on: bool) -> None:
        """Post (or stop posting) the live output of a job to its thread."""
        if on:
            self._verbose.add(job_id)
        else:
            self.quiet(job_id)

    def quiet(self, job_id: UUID | None = None) -> None:
        """Stop live output for one job, or for every job; output not yet posted is left out."""
        jobs = set(self._verbose) if job_id is None else {job_id}
        self._verbose -= jobs
        for key in [k for k in self._pending if k[2] == "output" and k[1] in jobs]:
            self._size -= len(self._pending.pop(key).lines)

    def last_seq(self, job_id: UUID) -> int:
        """The seq of the last event of a job the herald has taken in (0: none)."""
        job = self._jobs.get(job_id)
        return job.last_seq if job is not None else 0

    @property
    def pending(self) -> int:
        """Updates waiting for a rate budget (or for the provider to connect)."""
        return self._size

    # -- reading the bus --------------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name="herald-sender")
        try:
            await self._read_loop()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _subscribe(self) -> Subscription:
        # At most ``queue_size`` events (100 at least) wait on the bus: a herald that falls
        # that far behind is dropped by the bus and catches up from the database.
        return self._bus.subscribe(EventFilter(types=TYPES), buffer=max(self._queue_size, 100))

    async def _read_loop(self) -> None:
        subscription = self._subscribe()
        self._last_id = max(self._last_id, await self._store.last_event_id())
        self.ready.set()
        failures = 0
        try:
            while True:
                try:
                    batch = await subscription.get_batch()
                except SubscriptionClosed as closed:
                    subscription.close()
                    self.resubscribes += 1
                    log.warning("herald_resubscribing", reason=closed.reason)
                    if failures:  # closed again at once (a bus shutting down): back off
                        await asyncio.sleep(min(RESUBSCRIBE_MAX_S, 0.05 * 2**failures))
                    failures += 1
                    subscription = self._subscribe()
                    await self._catch_up()
                    continue
                failures = 0
                for event in batch:
                    await self._take(event)
        finally:
            subscription.close()

    async def _catch_up(self) -> None:
        """Re-read what the bus dropped, from the database (the new subscription is already
        open, so nothing falls between the two; duplicates are skipped by seq)."""
        read = 0
        try:
            while read < CATCH_UP_LIMIT:
                events = await self._store.list_events_since(self._last_id)
                if not events:
                    return
                read += len(events)
                wanted = EventFilter(types=TYPES).matches
                for event in events:
                    self._last_id = max(self._last_id, event.id)
                    if wanted(event):
                        await self._take(event, replayed=True)
            log.warning("herald_catch_up_cut_short", read=read)
            self._last_id = await self._store.last_event_id()
        except Exception:  # the database is the record: the next drop tries again
            log.exception("herald_catch_up_failed")

    async def _take(self, event: Event, *, replayed: bool = False) -> None:
        self._last_id = max(self._last_id, event.id)
        if event.job_id is None:
            return
        job = self._jobs.get(event.job_id)
        if job is None:
            job = await self._load(event)
            if job is None:
                return
        self._jobs.move_to_end(job.id)
        if event.seq <= job.last_seq:
            return  # seen already: a replay after a resubscribe
        job.last_seq = event.seq
        self.recovered += replayed
        try:
            self._accept(job, event)
        except Exception:  # one odd event must not stop the herald
            log.exception("herald_event_failed", job_id=str(job.id), type=event.type)

    async def _load(self, event: Event) -> JobView | None:
        """A job first seen now: from its ``job.created`` event (the live one or, for a job
        created before the herald started, the stored one)."""
        assert event.job_id is not None
        created: Event | None = event if event.type == "job.created" else None
        job_type = None
        if created is None:
            try:
                found = await self._store.find_job(event.job_id)
                stored = await self._store.list_events(event.job_id, types=["job.created"], limit=1)
            except Exception:
                log.exception("herald_job_lookup_failed", job_id=str(event.job_id))
                return None
            if found is None:
                return None
            job_type, created = found.type, (stored[0] if stored else None)
        payload = created.payload if created is not None else {}
        chat = (payload.get("metadata") or {}).get("chat") or {}
        if not isinstance(chat, dict) or chat.get("provider") not in (None, self._provider.name):
            chat = {}  # started from another platform
        job_type = job_type or str(payload.get("type", ""))
        thread, chat_channel = chat.get("thread"), chat.get("channel")
        job = JobView(
            event.job_id,
            job_type,
            payload.get("issue_ref"),
            channel=self._routes.get(job_type) or _str(chat_channel) or self._default_channel,
            thread=_str(thread),
            last_seq=event.seq - 1,
        )
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS:
            forgotten, _ = self._jobs.popitem(last=False)
            self._refs.pop(forgotten, None)
        return job

    def _accept(self, job: JobView, event: Event) -> None:
        job.observe(event)
        if event.type == "step.output":
            if job.id in self._verbose:
                self._queue_output(job, str(event.payload.get("chunk", "")))
            return
        status = render(job, event)
        if status is None:
            return
        dests: list[Dest] = [("thread", job.thread)] if job.thread else []
        if status.milestone and job.channel:
            dests.insert(0, ("channel", job.channel))
        for dest in dests:
            self._enqueue((dest, job.id, "status"), status.text, final=status.final)

    def _queue_output(self, job: JobView, chunk: str) -> None:
        target = ("thread", job.thread) if job.thread else ("channel", job.channel or "")
        if not target[1] or not chunk:
            return
        key = (target, job.id, "output")
        current = self._pending.get(key)
        if current is not None:  # consecutive output is one message: its tail
            current.lines[0] = (current.lines[0] + chunk)[-OUTPUT_CHARS:]
        else:
            self._enqueue(key, chunk[-OUTPUT_CHARS:], final=False)

    def _enqueue(self, key: SlotKey, text: str, *, final: bool) -> None:
        current = self._pending.get(key)
        if current is None:
            if self._size >= self._queue_size and not self._make_room(final):
                self.dropped += 1
                return
            self._pending[key] = _Update([text], final)
            self._size += 1
        else:
            current.lines.append(text)
            current.final = final
            self._size += 1
            if len(current.lines) > MAX_LINES or self._size > self._queue_size:
                self._fold(current, 1)
            if final:  # the end of a job goes out after what it replaced
                self._pending.move_to_end(key)
        self._wake.set()

    def _fold(self, update: _Update, lines: int, *, queued: bool = True) -> None:
        """Leave out the oldest ``lines`` lines of an update (the latest always stays)."""
        lines = min(lines, len(update.lines) - 1)
        del update.lines[:lines]
        update.folded += lines
        self.dropped += lines
        if queued:
            self._size -= lines

    def _make_room(self, final: bool) -> bool:
        """Full: only the end of a job gets in, in place of the oldest update that is not one
        (or of the oldest of all)."""
        if not final:
            return False
        victim = next((k for k, u in self._pending.items() if not u.final), None)
        removed = self._pending.pop(victim if victim is not None else next(iter(self._pending)))
        self.dropped += len(removed.lines)
        self._size -= len(removed.lines)
        return True

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait_s = await self._flush()
            except Exception:  # a bug here must not end the herald
                log.exception("herald_flush_failed")
                wait_s = MAX_WAIT_S
            if self._wake.is_set():
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def _flush(self) -> float | None:
        """Send what the budgets allow; how long to wait before looking again (None: until
        something new is queued)."""
        if not self._pending:
            return None
        if not self._provider.is_connected():
            return MAX_WAIT_S
        wait_s = MAX_WAIT_S
        for key in list(self._pending):
            update = self._pending.get(key)
            if update is None:
                continue
            budget = self._budgets.get(key[0])
            if budget is None:
                budget = self._budgets[key[0]] = _Budget(self._rate)
            now = self._clock.now().timestamp()
            blocked_s = budget.wait_s(now)
            if blocked_s > 0:
                update.blocked = True
                wait_s = min(wait_s, blocked_s)
                continue
            del self._pending[key]
            self._size -= len(update.lines)
            budget.calls.append(now)
            await self._deliver(key, update)
        return wait_s if self._pending else None

    async def _deliver(self, key: SlotKey, update: _Update) -> None:
        dest, job_id, kind = key
        refs = self._refs.setdefault(job_id, {}) if job_id in self._jobs else {}
        ref = refs.get((dest, kind))
        edit = update.blocked and ref is not None and kind == "status"
        if kind == "output":
            text = output_text(update.lines[0])
        elif edit:  # over budget: the status message shows the latest state
            self._fold(update, len(update.lines) - 1, queued=False)
            text = folded_text(update.lines[-1], update.folded)
        else:  # what came together goes out together
            while len(update.lines) > 1 and sum(len(t) + 1 for t in update.lines) > MAX_TEXT:
                self._fold(update, 1, queued=False)
            text = folded_text("\n".join(update.lines), update.folded)
        try:
            if edit:
                assert ref is not None
                await self._provider.edit_message(ref, text)
            elif dest[0] == "thread":
                refs[(dest, kind)] = await self._provider.send_thread_message(dest[1], text)
            else:
                refs[(dest, kind)] = await self._provider.send_message(dest[1], text)
        except Exception:
            self.failed_sends += 1
            log.warning("herald_send_failed", job_id=str(job_id), dest=dest[0], exc_info=True)
            refs.pop((dest, kind), None)  # an edit that failed: the message may be gone
            self._put_back(key, update)

    def _put_back(self, key: SlotKey, update: _Update) -> None:
        """Queue a failed update again, before what came for its job since."""
        if update.tries + 1 >= MAX_TRIES:
            self.dropped += len(update.lines)
            return
        newer = self._pending.get(key)
        if newer is None:
            self._pending[key] = replace(update, tries=update.tries + 1)
            self._size += len(update.lines)
        elif key[2] == "output":
            newer.lines[0] = (update.lines[0] + newer.lines[0])[-OUTPUT_CHARS:]
        else:
            newer.lines[:0] = update.lines
            newer.folded += update.folded
            self._size += len(update.lines)
            if len(newer.lines) > MAX_LINES:
                self._fold(newer, len(newer.lines) - MAX_LINES)


def _str(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value) else None
