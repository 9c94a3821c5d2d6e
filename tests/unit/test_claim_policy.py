"""The fair-share cursor and the limited profiles a claim locks."""

from __future__ import annotations

from ai_service.claim_policy import OWNERS_PER_CLAIM, ClaimPolicy

KEY = (("llm_chat",), None)


def test_a_fresh_cursor_starts_at_the_first_owner() -> None:
    params = ClaimPolicy().params(KEY, scan=10)
    assert (params["fair_from"], params["fair_inclusive"], params["fair_used"]) == ("", True, 0)


def test_an_owner_with_weight_left_comes_first_again() -> None:
    policy = ClaimPolicy.of(owner_weights=[("telephony", 4)])
    policy.advance(KEY, {"fair_owner": "telephony", "fair_used": 3})
    params = policy.params(KEY, scan=10)
    assert (params["fair_from"], params["fair_inclusive"], params["fair_used"]) == (
        "telephony",
        True,
        3,
    )


def test_an_owner_whose_round_is_used_up_comes_after_the_others() -> None:
    policy = ClaimPolicy.of(owner_weights=[("telephony", 4)])
    policy.advance(KEY, {"fair_owner": "telephony", "fair_used": 4})
    assert policy.params(KEY, scan=10)["fair_inclusive"] is False
    policy.advance(KEY, {"fair_owner": "monitoring-pf", "fair_used": 1})  # weight 1
    assert policy.params(KEY, scan=10)["fair_inclusive"] is False


def test_a_claim_that_took_nothing_leaves_the_cursor() -> None:
    policy = ClaimPolicy()
    policy.advance(KEY, {"fair_owner": "a", "fair_used": 1})
    policy.advance(KEY, {"fair_owner": None, "fair_used": None})
    assert policy.params(KEY, scan=10)["fair_from"] == "a"


def test_cursors_are_kept_per_kind_of_claim() -> None:
    policy = ClaimPolicy()
    policy.advance(KEY, {"fair_owner": "a", "fair_used": 1})
    assert policy.params((("transcription",), None), scan=10)["fair_from"] == ""


def test_a_claim_reads_a_bounded_number_of_owners() -> None:
    assert ClaimPolicy().params(KEY, scan=10)["owners"] == 10
    assert ClaimPolicy().params(KEY, scan=10_000)["owners"] == OWNERS_PER_CLAIM


def test_only_limited_profiles_the_claim_could_admit_to_are_locked() -> None:
    policy = ClaimPolicy.of(profile_limits=[("whisperx", 2), ("qwen2.5-14b", 64)])
    assert policy.locked_profiles(None) == ["qwen2.5-14b", "whisperx"]
    assert policy.locked_profiles(("whisperx", "other")) == ["whisperx"]
    assert policy.locked_profiles(("other",)) == []
    assert ClaimPolicy().locked_profiles(None) == []
