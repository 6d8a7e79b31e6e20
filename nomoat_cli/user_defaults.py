"""The config file's defaults (``swarm.user_config``) as the ``swarm`` commands' defaults.

Click looks a missing option up in the context's ``default_map`` after the command line and the option's
environment variable and before its built-in default, which is exactly the precedence the file promises. The
app's callback sets the map from the file before the command's own options are parsed::

    ctx.default_map = default_map(typer.main.get_command(app), load_user_config(path))
"""

from __future__ import annotations

from typing import Any

from swarm.user_config import UserConfig

# config key -> (the option it sets, the commands it applies to; None: every command that has that option).
# name, device and identity mean the donor's: `swarm launch --name` is a run's name.
OPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "coordinator": ("coordinator", None),
    "ca": ("ca", None),
    "fingerprint": ("fingerprint", None),
    "join_token_file": ("join_token", None),
    "name": ("name", ("donate",)),
    "device": ("device", ("donate",)),
    "identity": ("identity", ("donate",)),
}


def default_map(group: Any, config: UserConfig) -> dict[str, Any]:
    """Click's nested ``default_map`` for every command under ``group`` (the app's click Group):
    {command: {option: value}}, with sub-groups nested ({"token": {"create": {...}}}). Reads the join token
    file only if the config names one."""
    settings = config.settings()
    if "join_token_file" in settings:
        settings["join_token_file"] = config.join_token()
    values = {OPTIONS[key][0]: (key, value) for key, value in settings.items()}
    return _for_group(group, values) if values else {}


def _for_group(group: Any, values: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            nested = _for_group(command, values)
        else:
            nested = {param.name: value for param in command.params
                      if param.name in values for key, value in [values[param.name]]
                      if OPTIONS[key][1] is None or name in (OPTIONS[key][1] or ())}
        if nested:
            result[name] = nested
    return result
