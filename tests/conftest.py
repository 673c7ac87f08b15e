"""Shared test fixtures. Server fixtures live in tests/fixtures/ and are registered here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.faulty_proxy", "tests.fixtures.prometheus",
                  "tests.fixtures.kfp_api", "tests.fixtures.models", "tests.fixtures.tiny_transformer"]

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPORA = (REPO.parent / "shared" / "corpora").resolve()


@pytest.fixture(scope="session")
def shared_corpora() -> Path:
    """The real corpora in ../shared/corpora (TREC, WNUT-17, UD English EWT)."""
    if not (SHARED_CORPORA / "INDEX.md").is_file():
        pytest.fail(f"../shared/corpora not found at {SHARED_CORPORA}: clone the repo with shared/ beside it")
    return SHARED_CORPORA


@pytest.fixture
def corpus_mirror(shared_corpora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the downloader at ../shared/corpora as a mirror, with a fresh download cache."""
    monkeypatch.setenv("KFTUNE_CORPUS_MIRROR", str(shared_corpora))
    monkeypatch.setenv("KFTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return shared_corpora
