"""The choice of WhisperX instance (`providers.whisperx.InstancePicker`), without I/O."""

from __future__ import annotations

import pytest

from ai_service.providers.whisperx import InstancePicker

ALL = [True, True, True]


def test_idle_instances_are_taken_in_turn() -> None:
    picker = InstancePicker(3)
    firsts = [picker.order(ALL)[0] for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]


def test_the_instance_with_fewest_requests_in_flight_comes_first() -> None:
    picker = InstancePicker(3)
    with picker.sending(0), picker.sending(0), picker.sending(1):
        orders = [picker.order(ALL) for _ in range(3)]
    # Whatever the turn, the idle one first, the busiest last.
    assert orders == [[2, 1, 0]] * 3


def test_ties_on_load_go_in_turn() -> None:
    picker = InstancePicker(3)
    with picker.sending(2):
        firsts = [picker.order(ALL)[0] for _ in range(4)]
    assert firsts == [0, 1, 0, 0]  # turns 0, 1, 2 (2 is busy: the next idle one), 0


def test_an_instance_whose_breaker_is_open_comes_last_even_when_idle() -> None:
    picker = InstancePicker(3)
    with picker.sending(1), picker.sending(2):
        order = picker.order([False, True, True])
    assert order[-1] == 0
    assert sorted(order[:2]) == [1, 2]


def test_a_request_stops_counting_when_it_ends_even_by_an_error() -> None:
    picker = InstancePicker(2)
    seen: list[list[int]] = []

    def request() -> None:
        with picker.sending(1):
            seen.append(list(picker.in_flight))
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        request()
    assert seen == [[0, 1]]
    assert picker.in_flight == [0, 0]


def test_the_gate_states_must_match_the_instances() -> None:
    with pytest.raises(ValueError, match="at least one instance"):
        InstancePicker(0)
    with pytest.raises(ValueError, match="2 gate states for 3 instances"):
        InstancePicker(3).order([True, True])
