"""The model card of an exported version names its contributors by the display names they chose beside their peer
IDs, and lists the run's hyperparameters: a real coordinator publishes a version (with the manifest it signs),
`swarm export` writes the card from what it pulled."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from coordinator.publisher import PublishPolicy, ShardSnapshot
from coordinator.server import Coordinator, CoordinatorConfig
from nomoat_cli.app import app
from swarm.manifest import MANIFEST_FILE, Manifest, ManifestError, check_manifest_data
from swarm.spec import RunSpec
from tests.storage_contract import receipt_of

runner = CliRunner()
HOSTILE = "**Bob** [me](http://x)\x1b[31m|"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    config = CoordinatorConfig(data_dir=tmp_path_factory.mktemp("coord"), port=0, publish=False,
                               publish_policy=PublishPolicy(max_eval_regression=1e9, max_base_regression=1e9))
    with Coordinator(config) as coordinator:
        launched = runner.invoke(app, [
            "launch", "-c", coordinator.address, "--operator-token-file", str(coordinator.operator_token_file),
            "--name", "carded", "--data-slices", "2", "--lr", "0.02", "--optimizer", "sgd", "--lora-rank", "4",
            "--lora-alpha", "8", "--seq-len", "32", "--target-batch-size", "16", "--averaging-mode", "local"])
        assert launched.exit_code == 0, launched.output
        runs = coordinator.storage.runs
        alice = runs.register_worker("carded", "QmAlicePeer", "Alice", [0], data_slice=0, device="cpu")
        bob = runs.register_worker("carded", "QmBobPeer", HOSTILE, [0], data_slice=1, device="cpu")
        anonymous = runs.register_worker("carded", "QmNamelessPeer", "", [0], data_slice=1, device="cpu")
        now = datetime.now(timezone.utc) - timedelta(seconds=5)
        for worker in (alice, bob, anonymous):
            coordinator.storage.ledger.add_receipt(receipt_of(worker, status="verified", received_at=now))
        runtime = coordinator.runs.get("carded")
        snapshots = [ShardSnapshot(shard, 1, "peer", {name: runtime.initial_lora[name] + 0.01 for name in names},
                                   ("peer",)) for shard, names in enumerate(runtime.shard_names)]
        assert coordinator.publisher.publish_snapshots(runtime, snapshots).published
        yield coordinator


def test_the_card_names_contributors_and_lists_the_hyperparameters(published, tmp_path):
    result = runner.invoke(app, ["export", "-c", published.address, "--run", "carded", "--out",
                                 str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "repo" / "README.md").read_text()
    assert "- Alice (`QmAlicePeer`)" in card
    assert "- `QmNamelessPeer`" in card  # no name given: the peer ID alone
    [bob] = [line for line in card.splitlines() if "QmBobPeer" in line]
    assert bob == r"- \*\*Bob\*\* \[me\]\(http://x\)\| (`QmBobPeer`)"  # markdown and escapes made inert
    for row in ("| Base model | `tiny` |", "| Dataset | `sample` |",
                "| Optimizer | sgd, learning rate 0.02, weight decay 0 |", "| LoRA | rank 4, alpha 8, dropout 0 |",
                "| Batch | 4 samples per worker step, 16 per swarm epoch |", "| Sequence length | 32 tokens |",
                "| Trained so far | 1 swarm epochs, 30 samples |"):
        assert row in card, row
    assert "| Averaging | local (DiLoCo-style): outer lr 1" in card
    manifest = Manifest.from_bytes((tmp_path / "repo" / MANIFEST_FILE).read_bytes())
    assert RunSpec.from_json(manifest.spec_json).content_hash == manifest.spec_hash  # the signed spec is the run's
    assert manifest.spec_json in card


def test_a_manifest_whose_spec_is_not_the_runs_is_refused(published):
    record = published.storage.versions.get_version("carded")
    data = json.loads(record.manifest)
    check_manifest_data(data)
    forged = {**data, "spec_json": data["spec_json"].replace('"lr":0.02', '"lr":0.5')}
    with pytest.raises(ManifestError, match="spec_json does not hash to its spec_hash"):
        check_manifest_data(forged)
    with pytest.raises(ManifestError, match="2 contributor names for 3 contributors"):
        check_manifest_data({**data, "contributor_names": ["a", "b"]})
