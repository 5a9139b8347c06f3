"""The search for the highest arrival rate a configuration serves within its latency bound.

A pure function of the trials so far, so that an interrupted search resumes where it stopped:
the worker reads the finished trials back and asks for the next one.

1. Start at ``start_fraction`` of the Offline throughput (the saturation rate: no server runs
   faster than it on average), or of the offline prediction where there is no Offline figure.
2. While every trial passed, grow the rate by ``grow``; while every trial failed, halve it,
   unless the p99 did not fall with the last halving (it is then the service time itself), or
   the minimum query count would take longer than ``max_trial_seconds`` at the halved rate.
3. Then bisect (geometrically) between the highest rate that passed and the lowest that failed
   above it, until they are within ``precision`` of each other.

A trial passes when LoadGen calls it VALID and its p99 meets the bound. A trial that LoadGen
calls INVALID *only* because its early-stopping rule wanted more queries (the p99 met the bound)
is inconclusive: it is run once more at the same rate with the queries LoadGen asked for.

A failed trial is run once more at the same rate before it bounds the search when its verdict
is doubtful: the contention check called it noisy (other processes or the hypervisor took the
cores it was timed on), or its rate is within ``retry_margin`` of a passing rate (one LoadGen
run cannot tell such neighbours apart: its p99 over ~500 queries moves by more than that from
run to run on a shared machine). Once only: a rate that fails twice bounds the search.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


#: an idle system's p99 this much over the bound ends a search before it starts (noise margin)
IDLE_MARGIN = 1.2


@dataclasses.dataclass(frozen=True)
class SearchRule:
    start_fraction: float = 0.8
    grow: float = 1.25
    precision: float = 0.05  # stop when the lowest failing rate is within 5% of the highest passing one
    max_trials: int = 14  # server trials per configuration, retries included
    min_qps: float = 0.5  # below this a configuration serves nothing within the bound
    max_queries: int = 8192  # an inconclusive trial is retried with at most this many queries
    max_trial_seconds: float = 30.0  # no rate so low that the minimum queries take longer than this
    retry_margin: float = 0.10  # a failure this close above a passing rate is run again once


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    qps: float
    min_queries: int
    retry: str | None = None  # why this trial repeats a rate whose failure was doubtful


def next_trial(trials: list[dict[str, Any]], anchor_qps: float, min_queries: int,
               rule: SearchRule = SearchRule()) -> TrialPlan | None:
    """The next Server trial after ``trials`` (this configuration's, in order; each with
    ``target_qps``, ``passed``, ``inconclusive``, ``queries_wanted``), or None when the search is
    done. ``anchor_qps``: the Offline throughput (or the prediction)."""
    if any(t.get("status", "ok") != "ok" for t in trials) or len(trials) >= rule.max_trials:
        return None
    if not trials:
        return TrialPlan(_round(max(anchor_qps * rule.start_fraction, rule.min_qps)), min_queries)
    last = trials[-1]
    if last.get("inconclusive") and not _retried(trials, last["target_qps"]):
        wanted = int(min(rule.max_queries, max(2 * min_queries, last.get("queries_wanted") or 0)))
        return TrialPlan(last["target_qps"], wanted)
    passed = [t["target_qps"] for t in trials if t.get("passed")]
    lo = max(passed, default=0.0)
    failed = [t["target_qps"] for t in trials if not t.get("passed") and t["target_qps"] > lo]
    hi = min(failed, default=None)
    if hi is None:
        return TrialPlan(_round(lo * rule.grow), min_queries)
    doubt = doubtful_failure(trials, hi, lo, rule)
    if doubt is not None:
        return TrialPlan(hi, min_queries, retry=doubt)
    if lo == 0.0:
        q = hi / 2
        if q < max(rule.min_qps, min_queries / rule.max_trial_seconds) or _not_falling(trials):
            return None
        return TrialPlan(_round(q), min_queries)
    if hi <= lo * (1 + rule.precision):
        return None
    return TrialPlan(_round(math.sqrt(lo * hi)), min_queries)


def doubtful_failure(trials: list[dict[str, Any]], qps: float, passing_qps: float,
                     rule: SearchRule = SearchRule()) -> str | None:
    """Why the failure at ``qps`` (the lowest failing rate above ``passing_qps``, the highest
    passing one, 0.0 if none) should be run again before it bounds the search, or None: it ran
    once only, and it was noisy or lies within ``rule.retry_margin`` above the passing rate."""
    at = [t for t in trials if t["target_qps"] == qps]
    if len(at) != 1:
        return None  # already run again (a retry, or an inconclusive trial's rerun): it bounds
    if at[0].get("noisy") is True:
        return "noisy failure"
    if passing_qps > 0 and qps <= passing_qps * (1 + rule.retry_margin):
        return f"failure within {rule.retry_margin:.0%} of a passing rate"
    return None


def _not_falling(trials: list[dict[str, Any]]) -> bool:
    """Whether halving the rate last time left the p99 where it was (within 10%): latency that
    does not fall with load is the service time itself, and lower rates will not meet the bound."""
    failed = [t for t in trials if not t.get("passed") and t.get("p99_ms") is not None]
    if len(failed) < 2:
        return False
    last, before = failed[-1], failed[-2]
    return last["target_qps"] < before["target_qps"] and last["p99_ms"] > 0.9 * before["p99_ms"]


def capacity(trials: list[dict[str, Any]]) -> float:
    """The highest rate that passed (0.0 if none did)."""
    return max((t["target_qps"] for t in trials if t.get("passed")), default=0.0)


def _retried(trials: list[dict[str, Any]], qps: float) -> bool:
    return sum(1 for t in trials if t["target_qps"] == qps) > 1


def _round(qps: float) -> float:
    """Three significant digits: rates read back from the log compare equal."""
    return float(f"{qps:.3g}")


def policy_finished(trials: list[dict[str, Any]], p99_bound_ms: float, min_queries: int,
                    rule: SearchRule = SearchRule()) -> bool:
    """Whether one policy's trials (in order) are complete: one failed, an idle query already
    misses the bound (IDLE_MARGIN), or the search has no next trial."""
    if any(t.get("status", "ok") != "ok" for t in trials):
        return True
    offline = next((t for t in trials if t.get("scenario") == "offline"), None)
    if offline is None:
        return False
    if hopeless(offline, p99_bound_ms):
        return True
    server = [t for t in trials if t.get("scenario") == "server"]
    return next_trial(server, anchor(offline), min_queries, rule) is None


def hopeless(offline: dict[str, Any], p99_bound_ms: float) -> bool:
    """Whether the p99 latency of an idle system (the offline prediction) misses the bound by
    more than IDLE_MARGIN: queueing only adds to it, so no arrival rate can pass."""
    return offline["predicted_p99_ms"] > IDLE_MARGIN * p99_bound_ms


def anchor(offline: dict[str, Any]) -> float:
    """The rate the search starts from: the Offline throughput, else the prediction."""
    return offline.get("achieved_qps") or offline["predicted_saturation_qps"]
