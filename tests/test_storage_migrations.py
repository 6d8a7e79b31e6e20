"""Contract tests of opening the storage (``Storage`` and ``coordinator.storage.database``): Alembic upgrades from
every earlier revision keep the data, the migrations match the models, reopening is harmless. On SQLite and on
PostgreSQL when one answers at 127.0.0.1:5432 (database ``test``; see conftest.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from coordinator.schema import Base
from coordinator.storage import MIGRATIONS_DIR, ReceiptRecord, RunSettings, Storage
from tests.storage_contract import (  # noqa: F401 (fixtures)
    T0,
    FakeClock,
    add,
    clock,
    create_run,
    get_receipt,
    get_worker,
    open_storage,
    register,
    storage,
)


def test_reopening_upgrades_idempotently_and_sees_data(open_storage, db_url: str) -> None:
    first = open_storage()
    run = create_run(first)
    worker = register(first)
    first.close()

    second = open_storage()
    assert second.runs.get_run("demo") == run
    assert get_worker(second, worker.worker_id) == worker
    third = open_storage()  # while the second is still open
    assert third.runs.list_runs() == [run]


def test_migrations_match_the_models(storage: Storage, db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_opening_storage_leaves_application_logging_alone(db_url: str) -> None:
    app_logger = logging.getLogger("nomoat.test_storage")
    root_handlers = list(logging.getLogger().handlers)
    with Storage(db_url):
        pass
    assert not app_logger.disabled
    assert logging.getLogger().handlers == root_handlers


def test_upgrade_carries_contributions_over_as_receipts(db_url: str) -> None:
    engine = create_engine(db_url)
    config = Config()  # as Database._migrate sets it up, but stopping at the first revision
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
        postgres = engine.dialect.name == "postgresql"

        def at(seconds: float) -> datetime | str:
            value = T0 + timedelta(seconds=seconds)
            # How SQLAlchemy wrote UTC datetimes into SQLite: naive, with microseconds.
            return value if postgres else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")

        worker_id = "a" * 32
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, spec_json, spec_hash, base_model_fingerprint, dataset_digest, created_at) "
                "VALUES ('demo', '{}', 'hash-demo', 'fingerprint', 'digest', :at)"), {"at": at(0)})
            connection.execute(text(
                "INSERT INTO workers (worker_id, run_name, peer_id, display_name, shards_json, data_slice, device, "
                "joined_at, last_seen, has_left) VALUES (:worker_id, 'demo', 'peer-legacy', 'old timer', '[0, 1]', "
                "0, 'cpu', :at, :at, :left)"), {"worker_id": worker_id, "at": at(0), "left": False})
            insert = text(
                "INSERT INTO contributions (id, worker_id, run_name, shard, samples, steps, epoch, loss, "
                "compute_seconds, created_at) VALUES (:id, :worker_id, 'demo', :shard, :samples, :steps, :epoch, "
                ":loss, :compute_seconds, :at)")
            connection.execute(insert, [
                dict(id=3, worker_id=worker_id, shard=0, samples=64, steps=4, epoch=2, loss=2.25, compute_seconds=12.5,
                     at=at(60)),
                dict(id=8, worker_id=worker_id, shard=1, samples=2**33, steps=8, epoch=5, loss=1.75,
                     compute_seconds=30.0, at=at(120)),
            ])

        storage = Storage(db_url, clock=FakeClock(T0 + timedelta(days=1)))  # upgrades to head
        try:
            legacy = ReceiptRecord(
                receipt_id="legacy-3", run_name="demo", shard=0, peer_id="peer-legacy", worker_id=worker_id,
                epoch=2, steps=4, samples=64, tokens=0, compute_seconds=12.5, loss=2.25,
                started_at=T0 + timedelta(seconds=60), ended_at=T0 + timedelta(seconds=60),
                received_at=T0 + timedelta(seconds=60), payload="", public_key="", signature="", status="unverified",
                status_reason="recorded before signed receipts", checked_at=None)
            assert get_receipt(storage, "legacy-3") == legacy
            assert [r.receipt_id for r in storage.ledger.list_receipts("demo")] == ["legacy-8", "legacy-3"]
            assert get_receipt(storage, "legacy-8").samples == 2**33
            assert {r.status for r in storage.ledger.list_receipts("demo")} == {"unverified"}
            assert storage.ledger.samples_by_shard("demo") == {0: 64, 1: 2**33}
            assert storage.ledger.latest_epoch_by_shard("demo") == {0: 2, 1: 5}
            assert storage.ledger.contributors_between("demo", None, T0 + timedelta(seconds=60)) == ["peer-legacy"]
            assert [(row.samples, row.verified_samples) for row in storage.ledger.leaderboard("demo")] == [(0, 0)]
            [row] = storage.ledger.leaderboard("demo", include_unverified=True)
            assert (row.display_name, row.samples, row.receipts, row.compute_seconds) == ("old timer", 64 + 2**33, 2,
                                                                                          42.5)
            # New receipts join the carried-over ones.
            stored = add(storage, get_worker(storage, worker_id), shard=0, samples=6)
            assert stored.received_at == T0 + timedelta(days=1)
            assert storage.ledger.samples_by_shard("demo") == {0: 70, 1: 2**33}
        finally:
            storage.close()
        assert "contributions" not in inspect(engine).get_table_names()
        assert {"receipts", "progress_observations"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_keeps_versions_published_before_manifests(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        _upgrade_to(engine, "0002")
        at = T0 if engine.dialect.name == "postgresql" else T0.strftime("%Y-%m-%d %H:%M:%S.%f")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, spec_json, spec_hash, base_model_fingerprint, dataset_digest, created_at) "
                "VALUES ('demo', '{}', 'hash-demo', 'fingerprint', 'digest', :at)"), {"at": at})
            connection.execute(text(
                "INSERT INTO adapter_versions (run_name, version, sha256, path, epoch, samples, eval_loss, "
                "base_eval_loss, contributors_json, created_at) VALUES ('demo', 1, 'abc', '/store/demo/v000001', 3, "
                "96, 1.5, 2.5, '[\"peer-a\"]', :at)"), {"at": at})
        storage = Storage(db_url, clock=FakeClock(T0 + timedelta(days=1)))  # upgrades to head
        try:
            old = storage.versions.get_version("demo", 1)
            assert (old.sha256, old.epoch, old.contributors) == ("abc", 3, ("peer-a",))
            assert (old.manifest, old.manifest_signature, old.release, old.collected_at) == (None, None, False, None)
            assert storage.versions.set_release("demo", 1).release
            with pytest.raises(ValueError, match="is a release"):
                storage.versions.mark_collected("demo", 1)
            assert storage.versions.rejected_snapshots("demo") == []
            storage.versions.add_rejected_snapshot("demo", "eval loss nan", epoch=4, eval_loss=float("nan"))
            [rejected] = storage.versions.rejected_snapshots("demo")
            assert (rejected.reason, rejected.epoch, rejected.eval_loss) == ("eval loss nan", 4, None)
        finally:
            storage.close()
    finally:
        engine.dispose()


def _upgrade_to(engine, revision: str) -> None:
    """Migrate the empty database of ``engine`` up to ``revision`` only (as Database._migrate does, but stopping)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_upgrade_to_0004_keeps_existing_runs_open_public_and_active(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        _upgrade_to(engine, "0003")
        at = T0 if engine.dialect.name == "postgresql" else T0.strftime("%Y-%m-%d %H:%M:%S.%f")
        with engine.begin() as connection:
            for name in ("older", "newer"):
                connection.execute(text(
                    "INSERT INTO runs (name, spec_json, spec_hash, base_model_fingerprint, dataset_digest, "
                    "created_at) VALUES (:name, '{}', 'hash', 'fingerprint', 'digest', :at)"), {"name": name, "at": at})
        storage = Storage(db_url, clock=FakeClock(T0 + timedelta(days=1)))  # upgrades to head
        try:
            assert [run.name for run in storage.runs.list_runs()] == ["older", "newer"]
            assert storage.runs.all_settings() == {"older": RunSettings(), "newer": RunSettings()}
            assert storage.runs.settings("older") == RunSettings("open", False, "active")
            assert storage.runs.default_run() is None  # the newest run is no longer joined implicitly
            assert storage.tokens.list_tokens("older") == []
        finally:
            storage.close()
    finally:
        engine.dispose()
