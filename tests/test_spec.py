import json

import pytest

from swarm.spec import RunSpec, SpecError, build_spec, load_spec_file, merge_fields


def test_defaults_are_valid_and_hash_is_stable():
    spec = RunSpec(name="demo")
    assert spec.content_hash == RunSpec.from_json(spec.to_json()).content_hash
    assert spec.content_hash != RunSpec(name="demo", lr=1e-4).content_hash
    assert spec.shard_run_id(1) == "demo_shard1"


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "shards": 0}, "shards"),
        ({"name": "ok", "lora": {"rank": 0}}, "lora.rank"),
        ({"name": "ok", "lora": {"dropout": 1.5}}, "lora.dropout"),
        ({"name": "ok", "batch_size_per_step": 8, "target_batch_size": 4}, "target_batch_size (4)"),
        ({"name": "ok", "optimizer": "lion"}, "optimizer"),
        ({"name": "ok", "lr": -1}, "lr"),
        ({"name": "ok", "unknown_field": 1}, "unknown_field"),
        ({"name": "ok", "base_model": "  "}, "base_model"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(fields, fragment):
    with pytest.raises(SpecError) as error:
        build_spec(fields)
    assert fragment in str(error.value)


def test_spec_files_toml_yaml_json_with_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('name = "t"\nshards = 2\n[lora]\nrank = 4\n')
    (tmp_path / "run.yaml").write_text("name: t\nshards: 2\nlora:\n  rank: 4\n")
    (tmp_path / "run.json").write_text(json.dumps({"name": "t", "shards": 2, "lora": {"rank": 4}}))
    specs = [load_spec_file(tmp_path / f"run.{ext}") for ext in ("toml", "yaml", "json")]
    assert len({spec.content_hash for spec in specs}) == 1
    overridden = load_spec_file(tmp_path / "run.toml", {"lr": 0.5, "lora": {"alpha": 2.0, "rank": None}})
    assert overridden.lr == 0.5 and overridden.lora.alpha == 2.0 and overridden.lora.rank == 4


def test_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(SpecError, match="cannot parse"):
        load_spec_file(tmp_path / "bad.toml")
    (tmp_path / "run.ini").write_text("x")
    with pytest.raises(SpecError, match="must be .toml"):
        load_spec_file(tmp_path / "run.ini")


def test_spec_file_without_lora_and_averaging_tables_takes_their_defaults(tmp_path):
    (tmp_path / "run.toml").write_text('name = "plain"\nshards = 2\n')
    unset = {"lr": None, "lora": {"rank": None, "alpha": None}, "averaging": {"matchmaking_time": None}}
    spec = load_spec_file(tmp_path / "run.toml", unset)
    assert spec == RunSpec(name="plain", shards=2)
    spec = load_spec_file(tmp_path / "run.toml", {"lora": {"rank": 4, "alpha": None}})
    defaults = RunSpec(name="plain")
    assert spec.lora.rank == 4 and spec.lora.alpha == defaults.lora.alpha and spec.averaging == defaults.averaging


def test_merge_fields_keeps_a_table_the_overrides_leave_alone():
    assert merge_fields({"lora": {"rank": 4}}, {"lora": {"rank": None}}) == {"lora": {"rank": 4}}
    assert merge_fields({}, {"lora": {"rank": None}}) == {}
    assert merge_fields({"lora": 3}, {"lora": {"rank": None}}) == {"lora": 3}  # still refused, by the spec check
    assert merge_fields({"lora": 3}, {"lora": {"rank": 2}}) == {"lora": {"rank": 2}}
