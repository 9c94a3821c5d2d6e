"""What a claim may take besides priority order: cluster-wide limits per model
profile (`MODEL_PROFILE_LIMITS`) and fair share between callers (`OWNER_WEIGHTS`).

Both are enforced by the claim statement itself (`job_claim` in sql/queries.sql);
this module holds the settings and the fair-share cursor: the owner served last
and how much of its weight it has taken in the current round. The cursor lives in
the claiming process (each worker and API process keeps its own): every claimer
walks the owners round robin from where its previous claim stopped, so no caller's
backlog can hold the others back, and no shared row is written on the claim path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Owners read per priority level by one claim, at most: the claim's cost stays
# bounded whatever the number of callers (the cursor reaches the others next time).
OWNERS_PER_CLAIM = 64

CursorKey = tuple[tuple[str, ...] | None, tuple[str, ...] | None]


@dataclass
class ClaimPolicy:
    """Profile limits and owner weights, and this process's fair-share cursors."""

    profile_limits: Mapping[str, int] = field(default_factory=dict)
    owner_weights: Mapping[str, int] = field(default_factory=dict)
    # (task types, model profiles) of a claim -> (owner served last, taken of its weight)
    _cursors: dict[CursorKey, tuple[str, int]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        profile_limits: Iterable[tuple[str, int]] = (),
        owner_weights: Iterable[tuple[str, int]] = (),
    ) -> ClaimPolicy:
        return cls(dict(profile_limits), dict(owner_weights))

    def weight(self, owner: str) -> int:
        """An owner's share per round: `OWNER_WEIGHTS`, default 1."""
        return self.owner_weights.get(owner, 1)

    def locked_profiles(self, model_profiles: tuple[str, ...] | None) -> list[str]:
        """The limited profiles a claim of `model_profiles` (None: any) could admit to."""
        if model_profiles is None:
            return sorted(self.profile_limits)
        return sorted(p for p in model_profiles if p in self.profile_limits)

    def params(self, key: CursorKey, scan: int) -> dict[str, Any]:
        """`job_claim`'s limit, weight and cursor parameters."""
        owner, used = self._cursors.get(key, ("", 0))
        # The cursor's owner comes first again while it has weight left in its round.
        inclusive = used < self.weight(owner) if owner else True
        return {
            "limited_profiles": list(self.profile_limits),
            "profile_limits": list(self.profile_limits.values()),
            "owner_names": list(self.owner_weights),
            "owner_weights": list(self.owner_weights.values()),
            "owners": min(scan, OWNERS_PER_CLAIM),
            "fair_from": owner,
            "fair_inclusive": inclusive,
            "fair_used": used if inclusive else 0,
        }

    def advance(self, key: CursorKey, row: Mapping[str, Any]) -> None:
        """Move the cursor past what a claim took (its answer's first row says)."""
        if row.get("fair_owner") is not None:
            self._cursors[key] = (row["fair_owner"], int(row["fair_used"]))
