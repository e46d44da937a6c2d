"""Repository lock tables, cached in memory while their database version is unchanged.

Every lock decision runs in a transaction that holds the repository's row lock, so decisions
on one repository are serial across processes; the cached ``LockTable`` is reused only when
the row's ``lock_version`` is the one this process last committed (or read).

A transaction checks the table out of the cache and changes it in place; it goes back only
when the transaction commits. So nothing a rolled-back transaction did (a claim acquired, a
repository row inserted) outlives it in memory, whatever made it roll back, commit included.

Every ``repo`` here is a lock-table key (``storage.locks.lock_key``): a workspace's name for a
repository, qualified by the workspace, or the absolute path of a checkout. A path has its tree
decide literal claims (``repo_root_of``): ``lib/v1.2`` existing there as a directory covers
``lib/v1.2/x.py``; a qualified name is never absolute, so the naming rule decides for it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from stitchwork.domain.claims import repo_root_of
from stitchwork.domain.executions import node_owner
from stitchwork.domain.locks import HeldLock, LockMode, LockTable
from stitchwork.errors import Conflict
from stitchwork.storage.locks import SqlLockStore
from stitchwork.storage.rows import EventWriter, Tx

HOLD_PREFIX = "hold:"  # owners of manual holds; never a node's (those are <uuid>/<node>)


@dataclass(frozen=True, slots=True)
class _Checkout:
    """A table an open transaction works on (a weak reference: a rolled-back transaction
    is not kept alive by the table it left behind)."""

    tx: weakref.ref[Tx]
    table: LockTable


class RepoLocks:
    def __init__(self, writer: EventWriter, store: SqlLockStore) -> None:
        self.writer = writer
        self.store = store
        self._tables: dict[str, tuple[int, LockTable]] = {}  # as committed, by version
        self._open: dict[str, _Checkout] = {}  # checked out by a transaction
        self._known: set[str] = set()  # repositories whose row is committed

    def forget(self, repo: str | None = None) -> None:
        """Drop cached tables (a table a failed transaction had checked out is never put
        back, so this only makes the next round read the table again)."""
        if repo is None:
            self._tables.clear()
        else:
            self._tables.pop(repo, None)

    async def table(self, tx: Tx, repo: str) -> LockTable:
        """The repository's lock table, its row locked for the rest of ``tx``; the same
        object for every call in ``tx``, back in the cache once ``tx`` commits."""
        out = self._open.get(repo)
        if out is not None and out.tx() is tx:
            return out.table
        version = tx.locked_repos.get(repo)
        if version is None:
            version = await self._lock(tx, repo)
        cached = self._tables.pop(repo, None)
        if cached is not None and cached[0] == version:
            table = cached[1]
        else:
            table = LockTable(repo_root=repo_root_of(repo))
            for row in await self.store.held_locks(tx.conn, repo):
                table.try_acquire(row["owner"], [(row["claim"], LockMode(row["mode"]))])
        self._open[repo] = _Checkout(weakref.ref(tx), table)
        return table

    async def _lock(self, tx: Tx, repo: str) -> int:
        """Lock the repository's row for ``tx`` and have its table (and the knowledge that
        the row exists) kept only if ``tx`` commits."""
        version = await self.store.lock_repo(tx, repo, create=repo not in self._known)
        tx.locked_repos[repo] = version
        ref = weakref.ref(tx)
        versions = tx.locked_repos  # read at commit: the version this transaction wrote
        tx.after_commit.append(lambda: self._committed(repo, ref, versions[repo]))
        return version

    def _committed(self, repo: str, ref: weakref.ref[Tx], version: int) -> None:
        """Put a committed transaction's table back in the cache, unless a later one
        (which read the table from the database) already has it."""
        self._known.add(repo)
        out = self._open.get(repo)
        if out is None or out.tx() is not ref():
            return
        del self._open[repo]
        cached = self._tables.get(repo)
        if cached is None or cached[0] < version:
            self._tables[repo] = (version, out.table)

    async def write(
        self,
        tx: Tx,
        repo: str,
        *,
        release: Iterable[str],
        acquire: Sequence[tuple[HeldLock, UUID | None, str | None]],
        now: datetime,
    ) -> None:
        """Persist releases and acquisitions already applied to the transaction's table."""
        owners = list(release)
        table = await self.table(tx, repo)
        for owner in owners:
            table.release(owner)
        await self.store.delete_locks(tx, repo, owners)
        await self.store.insert_locks(tx, repo, acquire, now)
        tx.locked_repos[repo] = await self.store.bump_repo(tx, repo)

    async def reservations(
        self, tx: Tx, repo: str, *, blocked_before: datetime, exclude: UUID
    ) -> LockTable | None:
        """Claims that starved ready nodes of other executions on ``repo`` reserve."""
        starved = await self.store.starved_nodes(
            tx.conn, repo, blocked_before=blocked_before, exclude=exclude
        )
        if not starved:
            return None
        plans = await self.store.plans(tx.conn, {execution_id for execution_id, _ in starved})
        table = LockTable(repo_root=repo_root_of(repo))
        for execution_id, node_id in starved:
            node = plans[execution_id].node(node_id)
            table.try_acquire(
                node_owner(execution_id, node_id), [(c, node.mode) for c in node.claims]
            )
        return table

    async def live_owners(
        self, tx: Tx, owners: Iterable[str], *, known_running: Iterable[str] = ()
    ) -> set[str]:
        """Owners that will release: running nodes of running or paused executions (manual
        holds never release by themselves)."""
        live = set(known_running) & set(owners)
        pairs: list[tuple[UUID, str, str]] = []
        for owner in set(owners) - live:
            prefix, _, node_id = owner.partition("/")
            try:
                pairs.append((UUID(prefix), node_id, owner))
            except ValueError:
                continue  # a manual hold
        if pairs:
            live |= await self.store.running_owners(tx.conn, pairs)
        return live

    async def hold(
        self, repo: str, name: str, claims: list[tuple[str, LockMode]]
    ) -> list[HeldLock]:
        """Hold claims on a repository by hand (owner ``hold:<name>``) until ``release_hold``:
        no node whose claims conflict starts meanwhile. All or nothing; raises ``Conflict``
        naming the holders when a claim is taken."""
        owner = f"{HOLD_PREFIX}{name}"
        async with self.writer.write() as tx:
            table = await self.table(tx, repo)
            conflicts = table.try_acquire(owner, claims)
            if conflicts:
                holders = ", ".join(sorted({c.holder for c in conflicts}))
                raise Conflict(f"claims are held by {holders}", field="claims", holders=holders)
            held = table.held(owner)
            await self.store.delete_locks(tx, repo, [owner])
            await self.store.insert_locks(
                tx, repo, [(h, None, None) for h in held], self.writer.clock.now()
            )
            tx.locked_repos[repo] = await self.store.bump_repo(tx, repo)
        return held

    async def release_hold(self, repo: str, name: str) -> int:
        """Drop a manual hold; returns how many claims it had (0: there was none)."""
        owner = f"{HOLD_PREFIX}{name}"
        async with self.writer.write() as tx:
            table = await self.table(tx, repo)
            count = await self.store.delete_locks(tx, repo, [owner])
            table.release(owner)
            tx.locked_repos[repo] = await self.store.bump_repo(tx, repo)
        return count
