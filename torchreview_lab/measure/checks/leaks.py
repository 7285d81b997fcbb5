"""TR015 leaks: live tensor memory that grows with every call.

The harness runs several times under a live-storage tracker that records where each storage was
created; after each call (output dropped, ``gc.collect()``) the bytes still alive are noted. Growth
on every call after the first (which may fill caches) is a leak; the creation sites of the storages
that pile up name the line.
"""
from __future__ import annotations

import gc
from typing import Any, Dict, List

from .._format import fmt_bytes
from ...findings import Fix
from ..trackers import LiveStorageTracker
from ..rules import make_finding
from ._base import CheckContext


def check_leaks(ctx: CheckContext, calls: int = 4) -> list:
    tracker = LiveStorageTracker(decompose=False, record_sites=True)
    live: List[int] = []
    by_site: List[Dict[Any, int]] = []
    with tracker:
        for _ in range(max(3, calls)):
            out = ctx.run()
            del out
            gc.collect()
            live.append(tracker.live_bytes)
            sites: Dict[Any, int] = {}
            for nbytes, site in tracker.live_storages():
                sites[site] = sites.get(site, 0) + nbytes
            by_site.append(sites)
    growth = [b - a for a, b in zip(live[1:], live[2:])]  # skip the first call (caches, lazy init)
    if not growth or min(growth) <= 0:
        return []
    per_call = sum(growth) / len(growth)
    grown = {s: by_site[-1].get(s, 0) - by_site[1].get(s, 0) for s in by_site[-1]}
    culprits = sorted(((b, s) for s, b in grown.items() if b > 0 and s is not None), key=lambda x: -x[0])
    site = culprits[0][1] if culprits else ctx.location()
    return [make_finding(
        "TR015", f"Live tensor memory grows by {fmt_bytes(per_call)} per call", site,
        problem=f"after each call (output dropped, garbage collected) {fmt_bytes(per_call)} more tensor memory "
                f"stays alive; the tensors were created here and something keeps them (a list, a cache, a "
                f"global, or a loss kept with its graph).",
        impact="memory climbs every step until the run dies with out-of-memory",
        fix=Fix(before="history.append(loss)", after="history.append(loss.item())  # or loss.detach()"),
        evidence={"live_bytes_after_calls": live, "growth_per_call_bytes": per_call,
                  "sites": [f"{s[0]}:{s[1]}" for _, s in culprits[:5]]})]
