"""``swarm launch``: create a community training run on a coordinator.

Its RunSpec options are derived from the RunSpec's fields (``nomoat_cli.spec_flags``), so every field can be
set, under the name it has in a spec file; flags override a ``--spec`` file.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer

from nomoat_cli.common import (DEFAULT_COORDINATOR, CaFile, CoordinatorAddress, Fingerprint, Insecure,
                               ask, coordinator_endpoint, fail)
from nomoat_cli.credentials import OperatorTokenFile, with_credentials
from nomoat_cli.spec_flags import flag_overrides, spec_flags

SPEC_FLAGS = spec_flags()


def launch(**values: Any) -> None:
    """Launch a community training run.

    Every RunSpec field has a flag named after it: --lr is lr, and a field of a spec table is table-field:
    --lora-rank is [lora] rank. Flags override the --spec file; fields set by neither take their defaults.

    \b
    Example:
      swarm launch -c coord.example.org --name myrun --base-model tiny --dataset sample --shards 2
    """
    from swarm.spec import SpecError, build_spec, load_spec_file

    if values["join_policy"] not in ("open", "token"):
        fail(f"--join-policy is open or token, not {values['join_policy']!r}")
    overrides = flag_overrides(SPEC_FLAGS, values)
    try:
        run_spec = load_spec_file(values["spec"], overrides) if values["spec"] else build_spec(overrides)
    except SpecError as exc:
        fail(str(exc))
    endpoint = with_credentials(coordinator_endpoint(values["coordinator"], values["ca"], values["fingerprint"],
                                                     values["insecure"]), values["operator_token_file"])
    launched = ask(endpoint, lambda client: client.launch_run(run_spec, join_policy=values["join_policy"],
                                                               private=values["private"]))
    access = f"join policy {values['join_policy']}" + (", private" if values["private"] else "")
    typer.echo(f"launched run '{launched.run_name}' ({launched.spec_hash}; {access})")
    typer.echo(f"  base model fingerprint {launched.base_model_fingerprint}")
    typer.echo(f"  dataset {launched.dataset_digest}: {launched.train_samples} train / {launched.eval_samples} eval")


# Typer reads a command's options from its signature: this one lists the fixed options, then one per spec field.
setattr(launch, "__signature__", inspect.Signature([
    inspect.Parameter("coordinator", inspect.Parameter.KEYWORD_ONLY, annotation=CoordinatorAddress,
                      default=DEFAULT_COORDINATOR),
    inspect.Parameter("ca", inspect.Parameter.KEYWORD_ONLY, annotation=CaFile, default=None),
    inspect.Parameter("fingerprint", inspect.Parameter.KEYWORD_ONLY, annotation=Fingerprint, default=None),
    inspect.Parameter("insecure", inspect.Parameter.KEYWORD_ONLY, annotation=Insecure, default=False),
    inspect.Parameter("spec", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                      default=typer.Option(None, help="RunSpec file (.toml, .yaml, .json); flags override it.")),
    inspect.Parameter("operator_token_file", inspect.Parameter.KEYWORD_ONLY, annotation=OperatorTokenFile,
                      default=None),
    inspect.Parameter("join_policy", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option("open", help="open: anyone may join; token: joining needs a join "
                                           "token of the run (swarm token create).")),
    inspect.Parameter("private", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--private", help="Status, leaderboard and pulls of the run need "
                                           "the operator token or a join token.")),
    *(flag.parameter() for flag in SPEC_FLAGS),
]))
