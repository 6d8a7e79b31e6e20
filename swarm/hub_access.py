"""Whether a Hugging Face Hub model can be loaded now, decided in seconds: a base model id that is neither in
the local Hugging Face cache nor reachable on the Hub fails at once with what to do, instead of after
huggingface_hub's retries (52 s were seen on a machine without network).

Usage::

    snapshot = cached_source("org/model")   # the cached snapshot folder to load, None: ask the Hub; or HubError
    AutoModelForCausalLM.from_pretrained(snapshot or "org/model")

A cached model is loaded from its snapshot folder, not by id with ``local_files_only``: transformers 5 still
asks the Hub for an adapter config when given an id, and that request hangs where the Hub does.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from swarm.log import get_logger

logger = get_logger(__name__)
PROBE_TIMEOUT_S = 3.0  # one HEAD request to the Hub's endpoint
_TRUE = {"1", "on", "yes", "true"}


class HubError(OSError):
    """The model is not in the local cache and the Hub cannot be used; the message ("not in ...") says why and
    what to do."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: huggingface_hub makes no network call."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached_snapshot(name: str, revision: str | None = None) -> Path | None:
    """The folder of the model's snapshot in the local Hugging Face cache (at ``revision``, or main), if its
    config.json is there; None otherwise."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub's endpoint (HF_ENDPOINT; through the environment's proxy, as urllib finds it) gives no HTTP
    answer within ``timeout`` seconds, name resolution included; None when it answers (any status)."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # it answered: reachable
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome.append(f"{endpoint} cannot be reached ({reason})")

    # a thread, so that a name lookup that hangs (urlopen's timeout does not cover it) costs no more either
    worker = threading.Thread(target=probe, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"{endpoint} cannot be reached (no answer within {timeout:g} s)"


def cached_source(name: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder to load ``name`` from when the Hub must not or cannot be asked (offline, or
    no answer within ``PROBE_TIMEOUT_S``); None when the Hub answers; HubError when neither works."""
    from huggingface_hub import constants

    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if hub_offline():
        snapshot = cached_snapshot(name, revision)
        if snapshot is not None:
            return snapshot
        raise HubError(f"not in {where}, and HF_HUB_OFFLINE is set: unset it to download the model, or give the "
                       "folder of a downloaded copy as the base model")
    reason = hub_unreachable()
    if reason is None:
        return None
    snapshot = cached_snapshot(name, revision)
    if snapshot is not None:
        logger.warning("the Hugging Face Hub cannot be reached (%s): loading '%s' from the local cache", reason, name)
        return snapshot
    raise HubError(f"not in {where}, and the Hugging Face Hub cannot be reached: {reason}. Connect this "
                   "machine, or give the folder of a downloaded copy as the base model")
