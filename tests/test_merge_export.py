"""Merging adapter chains into the base model and exporting signed versions as Hugging Face repos, on the tiny
preset with real PEFT adapters, compared against PEFT itself and against merges computed by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from swarm.adapter_files import describe_files, file_sha256
from swarm.export import ExportError, export_hf_repo, is_hub_model_id
from swarm.identity import load_or_create_identity
from swarm.output_folder import OUTPUT_MARKER
from swarm.manifest import MANIFEST_FILE, SIGNATURE_FILE, ChainLink, Manifest, sign_manifest
from swarm.merge import (BYTE_TOKENIZER_FILE, MergeError, apply_adapter_chain, write_folder_atomically,
                         write_merged_model)
from swarm.model import (base_model_fingerprint, build_lora_model, build_tiny_model, load_base_model, lora_parameters,
                         tiny_config)
from swarm.spec import LoraSpec
from swarm.tokenizer import ByteTokenizer

TOKENS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 115, 119, 97, 114, 109]])
ATOL = 1e-5
LORA_1 = LoraSpec(rank=4, alpha=8.0)
LORA_2 = LoraSpec(rank=2, alpha=6.0, target_modules=("q_proj", "v_proj", "down_proj"))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _save_random_adapter(base: torch.nn.Module, lora: LoraSpec, seed: int, out: Path) -> Path:
    """A LoRA adapter with every A and B filled with seeded noise (B non-zero, so it changes the model)."""
    model = build_lora_model(base, lora, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(model).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(out)
    return out


def _merge_by_hand(model: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    """W += (alpha / r) * B @ A for every LoRA pair: the reference for PEFT's merge."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(adapter / "adapter_model.safetensors")
    prefix, suffix = "base_model.model.", ".lora_A.weight"
    names = [key[len(prefix):-len(suffix)] for key in weights if key.endswith(suffix)]
    assert names
    with torch.no_grad():
        for name in names:
            a, b = weights[f"{prefix}{name}.lora_A.weight"], weights[f"{prefix}{name}.lora_B.weight"]
            model.get_submodule(name).weight += scale * (b @ a)
    return model


def _load_merged_model(base_model: str, adapter_dirs: list[Path]):
    """``base_model`` with ``adapter_dirs`` merged in, and its tokenizer."""
    model, tokenizer = load_base_model(base_model)
    return apply_adapter_chain(model, adapter_dirs), tokenizer


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> tuple[Path, Path]:
    """adapter 1 on the tiny base; adapter 2 trained (here: filled) on base + adapter 1 merged."""
    root = tmp_path_factory.mktemp("adapters")
    first = _save_random_adapter(build_tiny_model(), LORA_1, seed=1, out=root / "a1")
    merged = apply_adapter_chain(build_tiny_model(), [first])
    second = _save_random_adapter(merged, LORA_2, seed=2, out=root / "a2")
    return first, second


def test_one_adapter_merges_to_the_peft_model(adapters):
    first, _ = adapters
    expected = _logits(PeftModel.from_pretrained(build_tiny_model(), str(first)))
    assert not torch.allclose(expected, _logits(build_tiny_model()), atol=1e-3)  # the adapter does something
    merged = apply_adapter_chain(build_tiny_model(), [first])
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(merged), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(_merge_by_hand(build_tiny_model(), first)), expected, atol=ATOL, rtol=0)


def test_two_level_chain_matches_merging_by_hand(adapters):
    first, second = adapters
    by_hand = _merge_by_hand(_merge_by_hand(build_tiny_model(), first), second)
    stacked_peft = PeftModel.from_pretrained(apply_adapter_chain(build_tiny_model(), [first]), str(second))
    chained = apply_adapter_chain(build_tiny_model(), [first, second])
    torch.testing.assert_close(_logits(chained), _logits(by_hand), atol=ATOL, rtol=0)
    torch.testing.assert_close(_logits(chained), _logits(stacked_peft), atol=ATOL, rtol=0)
    model, tokenizer = _load_merged_model("tiny", [first, second])
    assert isinstance(tokenizer, ByteTokenizer)
    torch.testing.assert_close(_logits(model), _logits(by_hand), atol=ATOL, rtol=0)
    assert apply_adapter_chain(build_tiny_model(), []).state_dict().keys() == build_tiny_model().state_dict().keys()


def test_written_merged_model_loads_without_peft(adapters, tmp_path):
    first, second = adapters
    model, _ = _load_merged_model("tiny", [first, second])
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")  # an existing folder is replaced whole
    fingerprint = base_model_fingerprint(build_tiny_model())
    assert write_folder_atomically(out, lambda staging: write_merged_model(staging, "tiny", fingerprint,
                                                                           [first, second])) == out
    assert (out / "model.safetensors").is_file() and not (out / "stale.txt").exists()
    assert not (out / "adapter_config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no staging folder left beside it
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(reloaded), _logits(model), atol=ATOL, rtol=0)
    described = json.loads((out / BYTE_TOKENIZER_FILE).read_text())
    assert described["type"] == "nomoat.byte" and described["vocab_size"] == 259
    assert (described["bos_token_id"], described["eos_token_id"], described["pad_token_id"]) == (256, 257, 258)


def test_folders_that_are_not_fitting_adapters_are_refused(adapters, tmp_path):
    first, _ = adapters
    base = build_tiny_model()
    before = _logits(base)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="not a PEFT adapter"):
        apply_adapter_chain(base, [first, tmp_path / "empty"])
    with pytest.raises(MergeError, match="does not exist"):
        apply_adapter_chain(base, [tmp_path / "missing"])
    garbled = tmp_path / "garbled"
    shutil.copytree(first, garbled)
    (garbled / "adapter_config.json").write_text("{not json")
    with pytest.raises(MergeError, match="not a valid PEFT config"):
        apply_adapter_chain(base, [garbled])
    config = tiny_config()
    config.hidden_size, config.intermediate_size = 32, 80
    other = _save_random_adapter(type(base)(config), LORA_1, seed=3, out=tmp_path / "other")
    with pytest.raises(MergeError, match="does not fit"):
        apply_adapter_chain(base, [first, other])
    torch.testing.assert_close(_logits(base), before, atol=0, rtol=0)  # refused before the model was touched
    with pytest.raises(MergeError, match="differs from the one the run trained on"):
        write_folder_atomically(tmp_path / "x", lambda staging: write_merged_model(staging, "tiny", "sha256:other",
                                                                                   [first]))
    assert not (tmp_path / "x").exists()


# --- export -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    return load_or_create_identity(tmp_path_factory.mktemp("keys") / "coordinator.key")


def _publish(adapter: Path, folder: Path, identity, *, version: int, chain: tuple[ChainLink, ...] = (),
             base_model: str = "tiny") -> Manifest:
    folder.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(adapter / name, folder / name)
    manifest = Manifest(
        run="stacked" if chain else "root", version=version, spec_hash="sha256:" + "ab" * 32, base_model=base_model,
        base_model_fingerprint=base_model_fingerprint(build_tiny_model()), epoch=17, samples=544,
        eval_loss=4.8125, base_eval_loss=5.5203, contributors=("QmWorkerAlice", "QmWorkerBob"),
        files=tuple(describe_files(folder)), created_at="2026-11-23T19:00:00+00:00", coordinator=identity.peer_id,
        parent=chain[-1] if chain else None, chain=chain, peers_compared=2,
    )
    sign_manifest(manifest, identity).write(folder)
    return manifest


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_export_writes_a_hub_repo_with_card_and_signed_manifest(adapters, coordinator, tmp_path):
    first, _ = adapters
    manifest = _publish(first, tmp_path / "v1", coordinator, version=1)
    out = export_hf_repo(tmp_path / "v1", tmp_path / "repo", trusted_signer=coordinator.peer_id)
    assert out == tmp_path / "repo"
    names = sorted(p.name for p in out.iterdir() if p.name != OUTPUT_MARKER)  # the marker: see test_pull_hardening
    assert names == sorted(["README.md", "adapter_config.json", "adapter_model.safetensors", MANIFEST_FILE,
                            SIGNATURE_FILE])
    for name in names[1:]:
        assert (out / name).read_bytes() == (tmp_path / "v1" / name).read_bytes()
    card = (out / "README.md").read_text()
    assert _front_matter(card) == {"library_name": "peft", "tags": ["nomoat", "lora", "peft"]}  # tiny: no base_model
    for text in ("QmWorkerAlice", "QmWorkerBob", "4.8125", "5.5203", "-0.7078", "| Epoch | 17 |", "544",
                 manifest.spec_hash, coordinator.peer_id, "PeftModel.from_pretrained", "none (a root run)"):
        assert text in card, text
    for entry in manifest.files:
        assert entry.sha256 in card
    assert file_sha256(out / MANIFEST_FILE) in card and file_sha256(out / SIGNATURE_FILE) in card
    assert PeftModel.from_pretrained(build_tiny_model(), str(out)) is not None  # the repo is a stock adapter


def test_export_names_a_hub_base_model_and_the_parent_chain(adapters, coordinator, tmp_path):
    first, second = adapters
    root = _publish(first, tmp_path / "v1", coordinator, version=1)
    _publish(second, tmp_path / "v2", coordinator, version=2, chain=(root.link,), base_model="org/base-1b")
    card = (export_hf_repo(tmp_path / "v2", tmp_path / "repo") / "README.md").read_text()
    assert _front_matter(card)["base_model"] == "org/base-1b"
    assert "`root@1`" in card and "merge them into the base first" in card
    assert is_hub_model_id("meta-llama/Llama-3.2-1B") and not is_hub_model_id("tiny")
    assert not is_hub_model_id("./models/x") and not is_hub_model_id("/abs/path") and not is_hub_model_id("a/b/c")


def test_export_refuses_tampered_versions_and_leaves_nothing(adapters, coordinator, tmp_path):
    first, _ = adapters
    published = tmp_path / "v1"
    _publish(first, published, coordinator, version=1)
    previous = export_hf_repo(published, tmp_path / "previous")  # an earlier, good export
    exported = {path.name: path.read_bytes() for path in previous.iterdir()}

    weights = tmp_path / "weights"
    shutil.copytree(published, weights)
    data = bytearray((weights / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (weights / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="adapter_model.safetensors hashes to .*, but the signed manifest says"):
        export_hf_repo(weights, tmp_path / "out")

    manifest = tmp_path / "manifest"
    shutil.copytree(published, manifest)
    payload = (manifest / MANIFEST_FILE).read_bytes().replace(b'"samples":544', b'"samples":99544')
    (manifest / MANIFEST_FILE).write_bytes(payload)
    with pytest.raises(ExportError, match="tampered manifest"):
        export_hf_repo(manifest, tmp_path / "out")
    with pytest.raises(ExportError, match="tampered manifest"):
        export_hf_repo(manifest, previous)

    with pytest.raises(ExportError, match="not by the trusted coordinator"):
        export_hf_repo(published, tmp_path / "out", trusted_signer="QmSomeoneElse")
    unsigned = tmp_path / "unsigned"
    shutil.copytree(published, unsigned)
    (unsigned / SIGNATURE_FILE).unlink()
    with pytest.raises(ExportError, match="not a signed version"):
        export_hf_repo(unsigned, tmp_path / "out")

    (unsigned / SIGNATURE_FILE).write_bytes(b"\xff\xfe\x00 not a signature")
    with pytest.raises(ExportError, match="holds no signed manifest"):
        export_hf_repo(unsigned, tmp_path / "out")

    assert not (tmp_path / "out").exists()
    assert {path.name: path.read_bytes() for path in previous.iterdir()} == exported  # no staging inside either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_export_merged_stacked_version_loads_without_peft(adapters, coordinator, tmp_path):
    first, second = adapters
    root = _publish(first, tmp_path / "v1", coordinator, version=1)
    _publish(second, tmp_path / "v2", coordinator, version=2, chain=(root.link,))
    with pytest.raises(ExportError, match="stacked on 1 versions"):
        export_hf_repo(tmp_path / "v2", tmp_path / "repo", merged_from=[])
    with pytest.raises(ExportError, match="but the chain names"):
        export_hf_repo(tmp_path / "v2", tmp_path / "repo", merged_from=[tmp_path / "v2"])
    assert not (tmp_path / "repo").exists()

    out = export_hf_repo(tmp_path / "v2", tmp_path / "repo", merged_from=[tmp_path / "v1"])
    card = (out / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "transformers"
    assert "nomoat_adapter/adapter_model.safetensors" in card
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    by_hand = _merge_by_hand(_merge_by_hand(build_tiny_model(), first), second)
    torch.testing.assert_close(_logits(reloaded), _logits(by_hand), atol=ATOL, rtol=0)
    assert (out / "nomoat_adapter" / MANIFEST_FILE).read_bytes() == (tmp_path / "v2" / MANIFEST_FILE).read_bytes()


def test_a_merged_tiny_export_loads_with_auto_tokenizer_and_auto_model(adapters, coordinator, tmp_path):
    """The byte tokenizer was only described in nomoat_tokenizer.json, which no Hugging Face tool reads."""
    from transformers import AutoTokenizer

    first, _ = adapters
    _publish(first, tmp_path / "v1", coordinator, version=1)
    out = export_hf_repo(tmp_path / "v1", tmp_path / "repo", merged_from=[])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    text = "Once upon a time, 3 cats sat. Größe: 5€ \n\t!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == ByteTokenizer().encode(text) and tokenizer.decode(ids) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (256, 257, 258)
    assert len(tokenizer) == ByteTokenizer.vocab_size == model.config.vocab_size
    batch = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[97, 98, 258, 258], [97, 98, 99, 100]]
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 4, ByteTokenizer.vocab_size) and torch.isfinite(logits).all()
    assert "tokenizer = AutoTokenizer.from_pretrained" in (out / "README.md").read_text()
