"""Regions: where a request may be served, and which deployments a router prefers.

Every deployment may name the region it processes requests in; every router process
knows its own (`GATEWAY_REGION`). Two rules follow (docs/deployment.md):

- **Preference.** A router tries the deployments of its own region first, in the
  balancer's order, and the others only after those (so only when its own region has
  none healthy: circuits open, at capacity, or failing this request).
- **Residency.** A request may be restricted to regions: by its key or team
  (`Principal.regions`) and by the router's region (`region.residency`); both apply.
  A restricted request goes only to deployments placed in one of its regions, whatever
  the balancer, the fallbacks or a failover would otherwise pick. A deployment with no
  region is in none, so it never serves a restricted request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.kernel.config import Deployment, RegionConfig
from services.kernel.principal import Principal


@dataclasses.dataclass(frozen=True, slots=True)
class RegionPolicy:
    """One router's region and the residency its region imposes on every request."""

    local: str | None = None
    residency: frozenset[str] | None = None  # every request served here stays in these

    @classmethod
    def of(cls, local: str | None, config: RegionConfig) -> RegionPolicy:
        pinned = config.residency.get(local) if local is not None else None
        return cls(local, frozenset(pinned) if pinned is not None else None)

    def allowed(self, principal: Principal | None) -> frozenset[str] | None:
        """The regions a request may be served in (None: any deployment, placed or not)."""
        own = principal.regions if principal is not None else None
        if self.residency is None:
            return own
        return self.residency if own is None else own & self.residency

    @staticmethod
    def admits(allowed: frozenset[str] | None, dep: Deployment) -> bool:
        """Whether `dep` may serve a request restricted to `allowed`."""
        return allowed is None or (dep.config.region is not None and dep.config.region in allowed)

    def prefer(self, ordered: Sequence[Deployment]) -> Sequence[Deployment]:
        """The deployments of this router's region first, each group in the given order."""
        local = self.local
        if local is None:
            return ordered
        mine = [d for d in ordered if d.config.region == local]
        if not mine or len(mine) == len(ordered):
            return ordered
        return mine + [d for d in ordered if d.config.region != local]

    def is_remote(self, dep: Deployment) -> bool:
        """Whether `dep` is placed in another region than this router's (a deployment in
        no region is nobody's: neither preferred nor remote)."""
        region = dep.config.region
        return self.local is not None and region is not None and region != self.local


def describe(regions: frozenset[str]) -> str:
    """Region names for an error message: sorted, and at most a few of them."""
    names = sorted(regions)
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else "none"
