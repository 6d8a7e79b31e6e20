"""``swarm demo``: the whole pipeline on one machine, as a user would run it.

A coordinator (embedded SQLite), a run on the ``tiny`` preset with the sample dataset, 2-3 worker processes
averaging through hivemind, at least two published versions, a pull, and the eval loss of the base model vs the
pulled adapter loaded with stock PEFT.

Everything the demo writes stays in its work folder (a temporary one unless given), the user folders of its
processes and of its pull included: the coordinators it trusts on first use, the pull cache, the workers'
identity keys and receipt outboxes. The user's own ``~/.config/nomoat`` and ``~/.cache/nomoat`` (and the
defaults in its config.toml) are neither read nor written.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from peft import PeftModel

from swarm.client import CoordinatorClient
from swarm.data import load_texts, split_dataset
from swarm.evaluation import eval_loss
from swarm.local_swarm import LocalSwarm
from swarm.model import load_base_model
from swarm.paths import UserDirs
from swarm.pull import pull
from swarm.spec import RunSpec


@dataclass
class DemoConfig:
    workers: int = 2  # worker processes
    seconds: float = 60.0  # training time of each worker
    shards: int = 2  # adapter shards of the demo run
    workdir: Path | None = None  # where logs, DB, store and the pulled adapter go (default: temp folder)


@dataclass
class DemoResult:
    versions: int
    base_loss: float
    adapter_loss: float
    adapter_dir: Path

    @property
    def improved(self) -> bool:
        return self.adapter_loss < self.base_loss


def demo_spec(shards: int, publish_interval_s: float) -> RunSpec:
    return RunSpec(name="demo", base_model="tiny", dataset="sample", shards=shards, batch_size_per_step=8,
                   target_batch_size=64, lr=2e-2, seq_len=64, data_slices=4, publish_interval_s=publish_interval_s,
                   averaging={"matchmaking_time": 2.0, "averaging_timeout": 20.0, "progress_refresh_s": 0.5})


def demo_user_environment(workdir: Path) -> dict[str, str]:
    """XDG folders inside ``workdir``: the demo's processes keep their nomoat user files there."""
    return {"XDG_CONFIG_HOME": str(workdir / "user-config"), "XDG_CACHE_HOME": str(workdir / "user-cache")}


def run_demo(config: DemoConfig) -> DemoResult:
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="nomoat-demo-")).resolve()
    spec = demo_spec(config.shards, publish_interval_s=max(5.0, config.seconds / 3))
    environment = demo_user_environment(workdir)
    user_dirs = UserDirs.from_environment(environment)
    say = print
    say(f"nomoat demo in {workdir}")
    with LocalSwarm(workdir, env=environment) as swarm:
        address = swarm.start_coordinator()
        say(f"coordinator at {address}")
        with CoordinatorClient(swarm.operator_endpoint(address)) as client:
            launched = client.launch_run(spec)
            say(f"launched run '{launched.run_name}' on the tiny preset: {launched.train_samples} train / "
                f"{launched.eval_samples} eval samples, {spec.shards} shard(s)")
            for index in range(config.workers):
                swarm.start_worker(address, spec.name, index,
                                   ["--max-seconds", str(config.seconds), "--wait-for-peers", str(config.workers)])
            say(f"{config.workers} workers training for {config.seconds:.0f}s each; logs in {workdir}")
            started = time.monotonic()
            codes = swarm.wait_workers(timeout=config.seconds + 300)
            say(f"workers finished in {time.monotonic() - started:.0f}s with exit codes {codes}")
            if any(codes):
                raise RuntimeError(f"a worker failed; see {workdir}/worker*.log")
            status = client.status(spec.name).runs[0]
            versions = len(status.versions)
            if versions < 2:  # the interval may not have come round twice: publish what the swarm holds now
                raise RuntimeError(f"only {versions} version(s) published during training; "
                                   f"see {workdir}/coordinator.log")
            for version in status.versions:
                say(f"  version {version.version}: epoch {version.epoch}, eval loss {version.eval_loss:.4f}, "
                    f"contributors {len(version.contributors)}")
        pulled = pull(address, spec.name, workdir / "pulled-adapter", user_dirs=user_dirs)
    base, tokenizer = load_base_model(spec.base_model)
    held_out = split_dataset(load_texts(spec.dataset), spec.eval_fraction, spec.seed).eval
    base_loss = eval_loss(base, held_out, tokenizer, spec.seq_len)
    adapted = PeftModel.from_pretrained(load_base_model(spec.base_model)[0], str(pulled.path))
    adapter_loss = eval_loss(adapted, held_out, tokenizer, spec.seq_len)
    say(f"pulled version {pulled.version} into {pulled.path}")
    say(f"eval loss on the held-out split: base model {base_loss:.4f} -> with the swarm's adapter {adapter_loss:.4f}")
    return DemoResult(versions, base_loss, adapter_loss, pulled.path)
