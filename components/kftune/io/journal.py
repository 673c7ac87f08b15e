"""The run journal: every object of a search under ``runs/<run>/...`` in the store, behind one object.

Both search drivers, ``kftune search`` (:mod:`kftune.steps.search`) and the pipeline's steps
(:mod:`kftune.steps.suggest`, :mod:`kftune.steps.trial`, :mod:`kftune.steps.select_best`, ...), read
and write a run through :class:`RunJournal`; no other module builds a ``runs/<run>/`` key. Layout::

    runs/<run>/search/
        spec.yaml, settings.json        the spec, sampler seed, parallelism and rounds a kftune search pinned
        space.json                      the search space ({"parameters", "notes", "lr_range"})
        rounds/round-NNNN.json          each round's plan, written before its trials start
        trials/<trial>.json             one record per trial (parallel trials never race on a shared object)
        finalists/<trial>/seed-S.json   the finalists' extra training runs
        checkpoints/<trial>/seed-S.pt   training checkpoints (a promotion resumes from them)
        lease.json                      the one driver that may write the run now (kftune.io.lease)
        best.json                       the winner and the search's outcome (kftune.core.search_policy.best_record)
        trials.tsv, trials.json, ...    kftune search's outputs (result.json last)
    runs/<run>/final/, runs/<run>/report/, runs/<run>/corpus/   the final model, the report, a Katib run's corpus

A round plan (``rounds/round-NNNN.json``) has one schema for both drivers: ``round``, ``kind`` (``search`` or
``finalists``; plans of older kftune searches said ``trial``, read as ``search``), ``requests``
(:meth:`kftune.core.search_policy.TrialRequest.to_dict`), ``judged`` (the trials a medianstop round judges
against), ``history`` (how many trials existed when it was planned) and ``note`` (why a round is empty).
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Sequence

from kftune.core.errors import ArtifactNotFoundError, ConfigError, DataError, Problem
from kftune.core.search_policy import TrialRequest, history_from_records
from kftune.core.space import SearchSpace
from kftune.core.trials import Trial

#: Where a search keeps its objects, below the store's root.
SEARCH_PREFIX = "runs/{run}/search"
ROUND_KINDS = ("search", "finalists")
_TRIAL_KEY = re.compile(r"runs/([^/]+)/search/trials/[^/]+\.json")


# --------------------------------------------------------------------------------------------------
# Keys (pure functions; RunJournal is how the steps use them)
# --------------------------------------------------------------------------------------------------

def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value in {".", ".."} or value.startswith("."):
        raise ConfigError([Problem(what, f"{value!r} cannot name a store folder: use letters, digits, - and _ "
                                         "(no '/', not starting with '.')")])
    return value


def check_run_id(run_id: str, what: str = "run_id") -> str:
    """``run_id`` if it can name a store folder, else :class:`ConfigError` naming ``what``."""
    return _segment(run_id, what)


def run_prefix(run_id: str) -> str:
    """``runs/<run>``: every object of run ``run_id``."""
    return f"runs/{_segment(run_id, 'run_id')}"


def search_prefix(run_id: str) -> str:
    """``runs/<run>/search``: where every object of the search of run ``run_id`` lives."""
    return SEARCH_PREFIX.format(run=_segment(run_id, "run_id"))


def trial_key(run_id: str, trial_id: str) -> str:
    """The key of trial ``trial_id``'s JSON record (one object per trial: parallel trials never race)."""
    return f"{search_prefix(run_id)}/trials/{_segment(trial_id, 'trial_id')}.json"


def finalist_key(run_id: str, trial_id: str, seeds: Sequence[int]) -> str:
    """The key of the record of finalist ``trial_id`` re-trained with ``seeds``."""
    return f"{search_prefix(run_id)}/finalists/{_segment(trial_id, 'trial_id')}/seed-{'-'.join(map(str, seeds))}.json"


def checkpoint_key(run_id: str, trial_id: str, seed: int) -> str:
    """The key of the training checkpoint of trial ``trial_id``'s run with ``seed`` (one per seed)."""
    return f"{search_prefix(run_id)}/checkpoints/{_segment(trial_id, 'trial_id')}/seed-{int(seed)}.pt"


def round_key(run_id: str, round_index: int) -> str:
    """The key of the plan of round ``round_index`` (written before its trials start)."""
    return f"{search_prefix(run_id)}/rounds/round-{int(round_index):04d}.json"


def lease_key(run_id: str) -> str:
    """The key of the run's lease: the one search driver that may write the run now (:mod:`kftune.io.lease`)."""
    return f"{search_prefix(run_id)}/lease.json"


# --------------------------------------------------------------------------------------------------
# The journal
# --------------------------------------------------------------------------------------------------

class RunJournal:
    """The objects of run ``run_id`` in ``store`` (an :class:`~kftune.io.store.ArtifactStore`): trial and
    finalist records, round plans, the search space, the pinned settings, ``best.json``. Reads raise
    :class:`DataError` naming the object when it is not valid JSON; a missing object reads as ``None``."""

    def __init__(self, store: Any, run_id: str):
        self.store = store
        self.run_id = check_run_id(run_id)
        self.prefix = search_prefix(run_id)

    @classmethod
    def open(cls, store: str, run_id: str) -> "RunJournal":
        """The journal of ``run_id`` under the store root URI ``store``."""
        from kftune.io.store import open_store

        return cls(open_store(store), run_id)

    # -- keys and URIs ----------------------------------------------------------------------------
    def trial_key(self, trial_id: str) -> str:
        return trial_key(self.run_id, trial_id)

    def finalist_key(self, trial_id: str, seeds: Sequence[int]) -> str:
        return finalist_key(self.run_id, trial_id, seeds)

    def checkpoint_key(self, trial_id: str, seed: int) -> str:
        return checkpoint_key(self.run_id, trial_id, seed)

    def round_key(self, round_index: int) -> str:
        return round_key(self.run_id, round_index)

    @property
    def lease_key(self) -> str:
        return lease_key(self.run_id)

    def key(self, name: str) -> str:
        """``runs/<run>/search/<name>``: one of the search's own objects (``space.json``, ``best.json``,
        ``settings.json``, ``spec.yaml``, kftune search's outputs)."""
        return f"{self.prefix}/{name}"

    def record_key(self, trial_id: str, kind: str = "trial", seeds: Sequence[int] | None = None) -> str:
        """Where the record of a trial (``kind`` ``trial``) or a finalist's run with ``seeds`` goes."""
        if kind == "finalist":
            return self.finalist_key(trial_id, seeds or ())
        return self.trial_key(trial_id)

    def request_key(self, request: TrialRequest) -> str:
        """Where the record of ``request`` goes."""
        return self.record_key(request.trial_id, request.kind, request.seeds)

    def uri(self, key: str | None = None) -> str:
        """The URI of ``key`` (default: the search's folder)."""
        return self.store.uri_for(key or self.prefix)

    def run_uri(self, part: str) -> str:
        """The URI of ``runs/<run>/<part>`` (``final``, ``report``, ``corpus``, ``search/trials``)."""
        return self.store.uri_for(f"{run_prefix(self.run_id)}/{part}")

    # -- plain objects ----------------------------------------------------------------------------
    def read(self, key: str) -> Any:
        """The JSON object at ``key``, or ``None`` when there is none."""
        from kftune.io.store import get_json

        try:
            return get_json(self.store, key)
        except ArtifactNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.store.uri_for(key)}: not valid JSON ({exc}); delete it to rerun what wrote "
                            "it") from None

    def write(self, key: str, obj: Any) -> None:
        from kftune.io.store import put_json

        put_json(self.store, key, obj)

    def _all(self, folder: str) -> list[dict[str, Any]]:
        out = []
        for key in self.store.list(f"{self.prefix}/{folder}"):
            if key.endswith(".json"):
                record = self.read(key)
                if record is not None:  # deleted between list and get
                    out.append(record)
        return out

    # -- trial records ----------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every trial record (``trials/``), in creation order."""
        records = [r for r in self._all("trials") if r.get("kind", "trial") == "trial"]
        order = {t.id: i for i, t in enumerate(history_from_records(records))}
        records.sort(key=lambda r: order.get(r.get("id"), len(order)))
        return records

    def history(self) -> tuple[list[dict[str, Any]], list[Trial]]:
        """The trial records in creation order, and the same as :class:`Trial` s (the planner's history)."""
        records = self.records()
        return records, history_from_records(records)

    def trials(self) -> list[Trial]:
        """The history: every trial as a :class:`Trial`, in creation order."""
        return self.history()[1]

    def finalist_records(self, finished: bool = True) -> list[dict[str, Any]]:
        """The finalists' extra runs (``finished``: only those whose state is not ``running``)."""
        return [r for r in self._all("finalists") if not finished or r.get("state") != "running"]

    def read_record(self, request: TrialRequest) -> dict[str, Any] | None:
        """The record of ``request``'s trial (or finalist run), or ``None``."""
        return self.read(self.request_key(request))

    def done(self, request: TrialRequest) -> bool:
        """Whether ``request``'s record shows it finished (any state but running, at its budget)."""
        try:
            record = self.read_record(request)
        except DataError:
            return False
        return record is not None and record.get("state") != "running" and record.get("budget_asked") == request.budget

    # -- rounds -----------------------------------------------------------------------------------
    def rounds(self) -> list[dict[str, Any]]:
        """Every round plan, in round order (an older kftune search's kind ``trial`` reads as ``search``)."""
        plans = self._all("rounds")
        for plan in plans:
            if plan.get("kind", "trial") == "trial":
                plan["kind"] = "search"
        return sorted(plans, key=lambda r: int(r.get("round", 0)))

    def write_round(self, round_index: int, kind: str, requests: Sequence[TrialRequest], *, history: int,
                    judged: Sequence[str] = (), note: str | None = None) -> dict[str, Any]:
        """Write the plan of round ``round_index`` (before its trials start) and return it."""
        if kind not in ROUND_KINDS:
            raise ValueError(f"round kind {kind!r} is not one of {ROUND_KINDS}")
        plan = {"round": int(round_index), "kind": kind, "requests": [r.to_dict() for r in requests],
                "judged": list(judged), "history": int(history), "note": note}
        self.write(self.round_key(round_index), plan)
        return plan

    # -- the search space -------------------------------------------------------------------------
    def read_space(self) -> tuple[SearchSpace, dict[str, Any] | None] | None:
        """The run's search space (with its notes) and the LR range test's hand-off note, or ``None``."""
        key = self.key("space.json")
        data = self.read(key)
        if data is None:
            return None
        try:
            space = SearchSpace.from_katib(data["parameters"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{self.store.uri_for(key)}: not a search space ({exc})") from None
        return SearchSpace(space.parameters, tuple(data.get("notes") or ())), data.get("lr_range")

    def write_space(self, space: SearchSpace, lr_range: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``space.json`` (``parameters`` in Katib's form, ``notes``, ``lr_range``) and return it."""
        document = {"parameters": space.to_katib(), "notes": list(space.notes),
                    "lr_range": dict(lr_range) if lr_range is not None else None}
        self.write(self.key("space.json"), document)
        return document

    # -- what a kftune search pins at its first start ---------------------------------------------
    def settings(self) -> dict[str, Any] | None:
        return self.read(self.key("settings.json"))

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        self.write(self.key("settings.json"), dict(settings))

    def spec_text(self) -> str | None:
        from kftune.io.store import get_text

        try:
            return get_text(self.store, self.key("spec.yaml"))
        except ArtifactNotFoundError:
            return None

    def write_spec_text(self, text: str) -> None:
        from kftune.io.store import put_text

        put_text(self.store, self.key("spec.yaml"), text)

    # -- the outcome ------------------------------------------------------------------------------
    def best(self) -> dict[str, Any] | None:
        """``best.json`` (:func:`kftune.core.search_policy.best_record`), or ``None``."""
        return self.read(self.key("best.json"))

    def write_best(self, record: Mapping[str, Any]) -> None:
        self.write(self.key("best.json"), dict(record))

    def delete_checkpoints(self) -> None:
        for key in self.store.list(f"{self.prefix}/checkpoints"):
            self.store.delete(key)

    # -- other runs under the same root -----------------------------------------------------------
    def earlier_trials(self) -> Iterator[tuple[str, str, dict[str, Any] | None, Exception | None]]:
        """``(run, uri, record, error)`` for every trial record of *other* runs under the store's root
        (warm start); ``record`` is ``None`` and ``error`` says why for one that cannot be read."""
        import json

        for key in self.store.list("runs"):
            m = _TRIAL_KEY.fullmatch(key)
            if m is None or m.group(1) == self.run_id:
                continue
            try:
                record = json.loads(self.store.get_bytes(key).decode("utf-8"))
                if not isinstance(record, dict):
                    raise DataError("not a JSON object")
            except Exception as exc:  # noqa: BLE001 - an unreadable record of another run is the caller's to skip
                yield m.group(1), self.store.uri_for(key), None, exc
                continue
            yield m.group(1), self.store.uri_for(key), record, None


__all__ = ["ROUND_KINDS", "RunJournal", "check_run_id", "checkpoint_key", "finalist_key", "lease_key", "round_key",
           "run_prefix", "search_prefix", "trial_key"]
