"""Whose backends are these, over time, and how many replicas fit beside the others: the pure pieces of
watching a live server (attribution, observation, the own-app answer and its words), hand-computed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolbench.core.attribution import (
    Attribution,
    Backend,
    MatchError,
    MatchRule,
    attribute,
    attribute_by_client,
    parse_match,
)
from poolbench.core.budget import own_app_answer
from poolbench.core.observation import Observation
from poolbench.core.words import own_app_short_words, own_app_words

POD_IPS = {"10.0.0.1": "web-a", "10.0.0.2": "web-b", "10.0.0.3": "web-c"}


def backend(
    pid: int,
    addr: str | None,
    usename: str | None = "app",
    app: str = "",
    state: str | None = "idle",
    age: float = 1.0,
    datname: str | None = "shop",
) -> Backend:
    return Backend(pid, usename, app, datname, addr, state, age, 0.5 if state else None)


def test_backends_from_a_pod_ip_are_the_pods_whatever_their_role_and_the_rest_go_by_the_rule() -> None:
    rows = [
        backend(1, "10.0.0.1"),
        backend(2, "10.0.0.1", usename="someone-else"),  # from the pod's IP: the pod opened it
        backend(3, "10.0.0.2", state="active"),
        backend(4, "10.9.9.9", app="proxy"),  # the app behind a proxy: by the rule
        backend(5, "10.9.9.9", usename="reporting", app="metabase"),
        backend(6, None, usename="reporting", app="metabase"),  # a Unix socket
        backend(7, None, usename=None, app="", state=None),  # invisible role: '?'
        backend(99, "10.0.0.1"),  # the reading session itself
    ]
    result = attribute(rows, POD_IPS, MatchRule(usename="app"), exclude_pids={99})
    assert {pod: [b.pid for b in bs] for pod, bs in result.by_pod.items()} == {
        "web-a": [1, 2],
        "web-b": [3],
        "web-c": [],
    }
    assert [b.pid for b in result.app_unplaced] == [4]
    assert [b.pid for b in result.others] == [5, 6, 7]
    assert result.app_total == 4
    assert result.others_by_owner() == {("reporting", "metabase"): 2, ("?", ""): 1}


def test_without_a_rule_only_pod_ips_are_the_apps_and_an_empty_rule_matches_nothing() -> None:
    rows = [backend(1, "10.0.0.1"), backend(2, "10.9.9.9")]
    for rule in (None, MatchRule()):
        result = attribute(rows, POD_IPS, rule)
        assert result.app_total == 1
        assert [b.pid for b in result.others] == [2]
    assert not MatchRule().matches(rows[0])


def test_a_rule_needs_every_field_it_gives() -> None:
    b = backend(1, "10.9.9.9", usename="app", app="api", datname="shop")
    assert MatchRule(usename="app", datname="shop").matches(b)
    assert not MatchRule(usename="app", application_name="worker").matches(b)
    assert not MatchRule(datname="other").matches(b)
    assert MatchRule(application_name="api").matches(b)


def test_match_text_parses_and_refuses_unknown_keys_in_one_line() -> None:
    assert parse_match("usename=app,application_name=pgbench,datname=d") == MatchRule("app", "pgbench", "d")
    assert parse_match("usename=app").describe() == "usename=app"
    for bad, words in [
        ("user=app", "unknown key 'user'"),
        ("usename", "is not KEY=VALUE"),
        ("usename=", "usename has no value"),
        ("usename=a,usename=b", "given twice"),
    ]:
        with pytest.raises(MatchError, match=words):
            parse_match(bad)


def test_locally_the_client_groups_stand_in_for_pods() -> None:
    rows = [
        backend(1, "127.0.0.1", app="pgbench"),
        backend(2, "127.0.0.1", app="pgbench", state="active"),
        backend(3, None, usename="other"),
        backend(4, "127.0.0.1", usename="other", app="psql"),
    ]
    matched = attribute_by_client(rows, MatchRule(usename="app"))
    assert {g: len(b) for g, b in matched.by_pod.items()} == {"app@127.0.0.1 pgbench": 2}
    assert matched.others_by_owner() == {("other", ""): 1, ("other", "psql"): 1}
    everyone = attribute_by_client(rows, None, exclude_pids={4})
    assert {g: len(b) for g, b in everyone.by_pod.items()} == {"app@127.0.0.1 pgbench": 2, "other@local": 1}
    assert everyone.others == ()


def read(pods: dict[str, list[Backend]], others: list[Backend] = (), unplaced: list[Backend] = ()) -> Attribution:  # type: ignore[assignment]
    return Attribution({p: tuple(b) for p, b in pods.items()}, tuple(unplaced), tuple(others))


def test_an_observation_keeps_each_pods_peaks_the_others_and_the_least_headroom() -> None:
    obs = Observation()
    tenant = backend(50, "10.9.9.9", usename="reporting", app="bi")
    # t=0: web-a 2 (1 idle), web-b 1; 1 other → total 4, headroom 20 - 4 = 16
    obs.add(
        0.0,
        2,
        read(
            {"web-a": [backend(1, "a", age=5), backend(2, "a", state="active")], "web-b": [backend(3, "b")]}, [tenant]
        ),
        20,
    )
    # t=1: web-a 3 idle (ghosts), web-b 0; 3 others (2 bi, 1 cron), 1 unplaced → total 7, headroom 13
    obs.add(
        1.0,
        3,
        read(
            {"web-a": [backend(1, "a", age=6), backend(2, "a"), backend(4, "a")], "web-b": []},
            [tenant, backend(51, "x", usename="reporting", app="bi"), backend(52, "x", usename="cron")],
            [backend(9, "p")],
        ),
        20,
    )
    # t=2: nobody; headroom 20
    obs.add(2.0, 3, read({"web-a": [], "web-b": []}), 20)
    assert obs.pods["web-a"].peak_connections == 3
    assert obs.pods["web-a"].kept_idle_peak == 3
    assert obs.pods["web-a"].oldest_backend_age_seconds == 6
    assert obs.pods["web-b"].peak_connections == 1
    assert obs.per_pod_peak == 3
    assert obs.app_peak == 4
    assert obs.unplaced_peak == 1
    assert obs.others_peak == 3
    assert obs.others_peak_by_owner == {("reporting", "bi"): 2, ("cron", ""): 1}
    assert obs.min_headroom == 13
    status = obs.to_status()
    assert status["perPodPeak"] == 3
    assert status["minHeadroom"] == 13
    assert status["othersPeakByOwner"] == [
        {"usename": "cron", "applicationName": "", "peak": 1},
        {"usename": "reporting", "applicationName": "bi", "peak": 2},
    ]
    assert status["series"] == [
        {"t": 0.0, "headroom": 16, "replicas": 2},
        {"t": 1.0, "headroom": 13, "replicas": 3},
        {"t": 2.0, "headroom": 20, "replicas": 3},
    ]


def test_the_series_coarsens_evenly_and_keeps_the_least_headroom() -> None:
    obs = Observation(series_points=4)
    for i in range(20):  # headroom 100 - i except a dip to 3 at read 13
        total = 97 if i == 13 else i
        pods = {"p": [backend(k, "a") for k in range(total)]}
        obs.add(float(i), i, read(pods), 100)
    assert len(obs.series) <= 4
    reads = [p.reads for p in obs.series]
    assert reads[:-1] == [reads[0]] * (len(reads) - 1)  # every full point covers the same reads
    assert sum(reads) == 20
    assert min(p.headroom for p in obs.series) == 3 == obs.min_headroom
    assert obs.series[-1].replicas == 19


# -- the own-app answer: (N + surge(N)) × per_pod ≤ usable - others --------------------------------


def test_the_answer_of_the_words_example() -> None:
    # available 235 - 40 = 195; at rest 195 // 12 = 16; rollout with 25%: 12 + 3 = 15 pods × 12 = 180 ≤ 195,
    # 13 + ceil(3.25) = 17 × 12 = 204 > 195 → 12, refusals from 13; HPA max 20 + 5 = 25 × 12 = 300.
    a = own_app_answer(12, 235, 40, "25%", hpa_max=20, replicas=10)
    assert (a.available, a.safe_at_rest, a.safe_in_rollout, a.refusals_from, a.needed_at_hpa_max) == (
        195,
        16,
        12,
        13,
        300,
    )
    words = own_app_words(a)
    assert words.startswith("at your measured 12 per pod, your HPA's max of 20 replicas + 25% surge (5 pods) need 300")
    assert "195 of 235 usable are left after 40 used by others" in words
    assert "16 fit at rest, 12 through a rollout; refusals start at 13 replicas (13 + 4 surge need 204)" in words


@pytest.mark.parametrize(
    ("replicas", "surge"),
    [(1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (12, 3), (13, 4)],  # ceil(N / 4), as the Deployment controller
)
def test_a_percentage_surge_rounds_up(replicas: int, surge: int) -> None:
    a = own_app_answer(1, 1000, 0, "25%", hpa_max=replicas)
    assert a.needed_at_hpa_max == replicas + surge


def test_an_absolute_surge_and_no_surge() -> None:
    # 100 - 10 = 90 available, 10 per pod: 9 at rest; surge 2: 7 + 2 = 9 × 10 = 90 → 7
    a = own_app_answer(10, 100, 10, 2, replicas=5)
    assert (a.safe_at_rest, a.safe_in_rollout, a.refusals_from, a.needed_at_hpa_max) == (9, 7, 8, None)
    b = own_app_answer(10, 100, 10)  # no surge (Recreate): the rollout is the rest
    assert (b.safe_at_rest, b.safe_in_rollout, b.refusals_from) == (9, 9, 10)
    assert "9 fit at rest, 9 through a rollout (no surge); refusals start at 10 replicas" in own_app_words(b)
    assert own_app_short_words(a) == "safe 9, 7 in a rollout, refused at 8"  # kubectl's Verdict column
    assert own_app_short_words(own_app_answer(0, 50, 5)) == "nothing measured per pod"


def test_per_pod_zero_says_nothing_about_replicas() -> None:
    a = own_app_answer(0, 50, 5, "25%", hpa_max=10)
    assert (a.safe_at_rest, a.safe_in_rollout, a.refusals_from, a.needed_at_hpa_max, a.available) == (0, 0, 0, 0, 45)
    assert own_app_words(a) == (
        "no connections measured per pod (0): the watch says nothing about how many replicas fit;"
        " 45 of 50 usable are left after 5 used by others"
    )


def test_others_over_the_usable_leave_no_replica() -> None:
    a = own_app_answer(3, 20, 25, "25%", hpa_max=4)
    assert (a.available, a.safe_at_rest, a.safe_in_rollout, a.refusals_from) == (-5, 0, 0, 1)
    words = own_app_words(a)
    assert "the others already use 25 of the 20 usable" in words
    assert "refusals start at 1 replica (the others alone are over)" in words


def test_an_hpa_max_above_the_safe_count_is_named_with_what_it_needs() -> None:
    # 60 - 0 available, 5 per pod: rollout 25%: 9 + 3 = 12 × 5 = 60 → 9; HPA max 12 + 3 = 15 × 5 = 75 > 60
    a = own_app_answer(5, 60, 0, "25%", hpa_max=12, replicas=4)
    assert (a.safe_in_rollout, a.refusals_from, a.needed_at_hpa_max) == (9, 10, 75)
    assert a.hpa_max is not None
    assert a.hpa_max >= a.refusals_from
    assert own_app_words(a) == (
        "at your measured 5 per pod, your HPA's max of 12 replicas + 25% surge (3 pods) need 75;"
        " 60 of 60 usable are left after 0 used by others: 12 fit at rest, 9 through a rollout;"
        " refusals start at 10 replicas (10 + 3 surge need 65)"
    )
    assert a.to_status()["refusalsFrom"] == 10


@settings(max_examples=300, deadline=None)
@given(
    per_pod=st.integers(0, 40),
    usable=st.integers(0, 400),
    others=st.integers(0, 450),
    surge=st.one_of(st.none(), st.integers(0, 5), st.sampled_from(["0%", "10%", "25%", "50%", "100%"])),
)
def test_the_answer_is_the_largest_count_that_fits_by_brute_force(
    per_pod: int, usable: int, others: int, surge: int | str | None
) -> None:
    a = own_app_answer(per_pod, usable, others, surge)
    assert a.available == usable - others
    if per_pod == 0:
        assert (a.safe_at_rest, a.safe_in_rollout, a.refusals_from) == (0, 0, 0)
        return

    def fits(n: int, with_surge: bool) -> bool:
        extra = (
            0
            if surge is None or not with_surge
            else (surge if isinstance(surge, int) else -(-n * int(surge[:-1]) // 100))
        )
        return (n + extra) * per_pod <= a.available

    assert a.safe_at_rest == max(n for n in range(0, 401) if n == 0 or fits(n, False))
    assert a.safe_in_rollout == max(n for n in range(0, 401) if n == 0 or fits(n, True))
    assert a.refusals_from == a.safe_in_rollout + 1
    assert not fits(a.refusals_from, True)
