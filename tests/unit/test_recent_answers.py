"""The process's own copy of recent cached answers: expiry and the memory bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ml_analytics.services.predictions.recent import RecentAnswers

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def test_an_answer_is_served_until_it_expires_and_then_let_go() -> None:
    recent = RecentAnswers()
    recent.put("k", '{"a":1}', NOW + timedelta(seconds=10))
    assert recent.get("k", NOW + timedelta(seconds=9)) == '{"a":1}'
    assert recent.get("k", NOW + timedelta(seconds=10)) is None
    assert len(recent) == 0 and recent.characters == 0


def test_the_least_recently_used_answers_go_when_the_characters_run_out() -> None:
    recent = RecentAnswers(max_characters=30)
    later = NOW + timedelta(hours=1)
    for key in "abc":
        recent.put(key, key * 10, later)
    assert recent.get("a", NOW) == "a" * 10  # now the most recently used
    recent.put("d", "d" * 10, later)
    assert [recent.get(key, NOW) for key in "abcd"] == ["a" * 10, None, "c" * 10, "d" * 10]
    assert recent.characters == 30


def test_a_key_stored_again_replaces_its_answer_and_its_expiry() -> None:
    recent = RecentAnswers(max_characters=30)
    recent.put("k", "x" * 20, NOW + timedelta(seconds=1))
    recent.put("k", "y" * 20, NOW + timedelta(seconds=60))
    assert recent.get("k", NOW + timedelta(seconds=30)) == "y" * 20
    assert recent.characters == 20


def test_an_answer_longer_than_the_budget_is_not_held() -> None:
    recent = RecentAnswers(max_characters=30)
    recent.put("small", "s" * 10, NOW + timedelta(hours=1))
    recent.put("huge", "h" * 31, NOW + timedelta(hours=1))
    assert recent.get("huge", NOW) is None
    assert recent.get("small", NOW) == "s" * 10
