"""Repository lock tables, cached in memory while their database version is unchanged.

Every lock decision runs in a transaction that holds the repository's row lock, so decisions
on one repository are serial across processes; the cached ``LockTable`` is reused only when
the row's ``lock_version`` is the one this process last saw (or wrote).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from uuid import UUID

from stitchwork.domain.executions import node_owner
from stitchwork.domain.locks import HeldLock, LockMode, LockTable
from stitchwork.errors import Conflict
from stitchwork.storage.locks import SqlLockStore
from stitchwork.storage.rows import EventWriter, Tx

HOLD_PREFIX = "hold:"  # owners of manual holds; never a node's (those are <uuid>/<node>)


class RepoLocks:
    def __init__(self, writer: EventWriter, store: SqlLockStore) -> None:
        self.writer = writer
        self.store = store
        self._tables: dict[str, tuple[int, LockTable]] = {}
        self._known: set[str] = set()

    def forget(self, repo: str | None = None) -> None:
        """Drop cached tables (after a transaction that changed them rolled back)."""
        if repo is None:
            self._tables.clear()
        else:
            self._tables.pop(repo, None)

    async def table(self, tx: Tx, repo: str) -> LockTable:
        """The repository's lock table, its row locked for the rest of ``tx``."""
        version = tx.locked_repos.get(repo)
        if version is None:
            version = await self.store.lock_repo(tx, repo, create=repo not in self._known)
            self._known.add(repo)
            tx.locked_repos[repo] = version
        cached = self._tables.get(repo)
        if cached is not None and cached[0] == version:
            return cached[1]
        table = LockTable()
        for row in await self.store.held_locks(tx.conn, repo):
            table.try_acquire(row["owner"], [(row["claim"], LockMode(row["mode"]))])
        self._tables[repo] = (version, table)
        return table

    async def write(
        self,
        tx: Tx,
        repo: str,
        *,
        release: Iterable[str],
        acquire: Sequence[tuple[HeldLock, UUID | None, str | None]],
        now: datetime,
    ) -> None:
        """Persist releases and acquisitions already applied to the cached table."""
        owners = list(release)
        table = await self.table(tx, repo)
        for owner in owners:
            table.release(owner)
        await self.store.delete_locks(tx, repo, owners)
        await self.store.insert_locks(tx, repo, acquire, now)
        self._bumped(tx, repo, table, await self.store.bump_repo(tx, repo))

    def _bumped(self, tx: Tx, repo: str, table: LockTable, version: int) -> None:
        tx.locked_repos[repo] = version
        self._tables[repo] = (version, table)

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
        table = LockTable()
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
            try:
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
                self._bumped(tx, repo, table, await self.store.bump_repo(tx, repo))
            except BaseException:
                self.forget(repo)
                raise
        return held

    async def release_hold(self, repo: str, name: str) -> int:
        """Drop a manual hold; returns how many claims it had (0: there was none)."""
        owner = f"{HOLD_PREFIX}{name}"
        async with self.writer.write() as tx:
            try:
                table = await self.table(tx, repo)
                count = await self.store.delete_locks(tx, repo, [owner])
                table.release(owner)
                self._bumped(tx, repo, table, await self.store.bump_repo(tx, repo))
            except BaseException:
                self.forget(repo)
                raise
        return count
