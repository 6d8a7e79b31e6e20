"""What the operator does to runs after launching them: join tokens, stop / archive / remove, the default run.
Only operators reach these (``coordinator.access.METHOD_ROLES``); the servicer translates the RPCs to these calls.

Usage::

    admin = RunAdministration(storage, runs)
    token, record = admin.create_join_token("demo", label="alice")   # the token exists only in this reply
    admin.set_state("demo", "stopped")                                # no new joins, no periodic publish
    admin.set_state("broken", "removed")                              # only a run that cannot be served
"""

from __future__ import annotations

import secrets

from coordinator.access import token_digest
from coordinator.request_checks import RequestError
from coordinator.runtime import RunRuntimes
from coordinator.storage import JoinTokenRecord, RunSettings, Storage, UnknownTokenError
from swarm.log import get_logger

logger = get_logger(__name__)

MAX_LABEL_CHARS = 200
SETTABLE_STATES = ("active", "stopped", "archived", "removed")


class RunAdministration:
    def __init__(self, storage: Storage, runs: RunRuntimes):
        self.storage, self.runs = storage, runs

    def forget_removed_runs(self) -> None:
        """At start, before the runs are loaded: removed runs are not built again."""
        for name, settings in self.storage.runs.all_settings().items():
            if settings.state == "removed":
                self.runs.forget(name)

    def create_join_token(self, run_name: str, label: str = "") -> tuple[str, JoinTokenRecord]:
        if len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise RequestError(f"a token label has at most {MAX_LABEL_CHARS} printable characters")
        token = secrets.token_urlsafe(32)
        record = self.storage.tokens.add(run_name, token_digest(token), label)  # UnknownRunError: NOT_FOUND
        logger.info("join token %d minted for run %s (%s)", record.id, run_name, label or "no label")
        return token, record

    def list_join_tokens(self, run_name: str) -> list[JoinTokenRecord]:
        return self.storage.tokens.list_tokens(run_name)

    def revoke_join_token(self, token_id: int) -> JoinTokenRecord:
        try:
            record = self.storage.tokens.revoke(token_id)
        except UnknownTokenError as exc:
            raise RequestError(str(exc), not_found=True) from None
        logger.info("join token %d of run %s revoked", token_id, record.run_name)
        return record

    def set_state(self, run_name: str, state: str, force: bool = False) -> RunSettings:
        """``stopped``: no new joins, the publisher skips it; ``archived``: also hidden from status; ``removed``:
        for a run its coordinator cannot serve (``force`` for a served one): hidden and no longer served, its
        versions' files kept; ``active``: back in service (not for a removed run)."""
        if state not in SETTABLE_STATES:
            raise RequestError(f"run state must be one of {', '.join(SETTABLE_STATES)}, got {state!r}")
        current = self.storage.runs.settings(run_name)  # UnknownRunError: NOT_FOUND
        if current.state == "removed" and state != "removed":
            raise RequestError(f"run '{run_name}' was removed; launch it again under a new name")
        if state == "removed" and current.state != "removed":
            broken = run_name in self.runs.unavailable()
            if not broken and not force:
                raise RequestError(f"run '{run_name}' is healthy (served by this coordinator); remove it anyway "
                                   f"with --force, or stop or archive it")
            settings = self.storage.runs.set_state(run_name, state)
            self.runs.forget(run_name)
        else:
            settings = self.storage.runs.set_state(run_name, state)
        logger.info("run %s is now %s", run_name, state)
        return settings

    def set_default_run(self, run_name: str) -> None:
        try:
            self.storage.runs.set_default(run_name or None)  # UnknownRunError: NOT_FOUND
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        logger.info("default run: %s", run_name or "none")
