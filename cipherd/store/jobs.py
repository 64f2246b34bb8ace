"""
Scheduled jobs shared by several nodes: a node runs a job only if it moves
the job's last run (table C{job_runs}) forward from the value it read, so
each due run happens on one node.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, insert, select, update

from cipherd.store import Store
from cipherd.store.schema import job_runs


async def claim(store: Store, name: str, due: Callable[[float], float], now: float, *,
                run_first: bool) -> bool:
    """
    Whether this node runs job C{name} now: it is due and no other node
    took this run.

    @param due: when the next run after a run at the given time is due.
    @param run_first: whether the job runs at the first look (when it has
        never run); otherwise its schedule counts from now.
    """
    def write(conn: Connection) -> bool:
        last = conn.execute(select(job_runs.c.last_run).where(
            job_runs.c.name == name)).scalar()
        if last is None:
            conn.execute(insert(job_runs).values(name=name, last_run=now))
            return run_first
        if due(float(last)) > now:
            return False
        moved = conn.execute(update(job_runs).where(
            (job_runs.c.name == name) & (job_runs.c.last_run == last)).values(last_run=now))
        return bool(moved.rowcount)

    claimed: bool = await store.run(write)
    return claimed
