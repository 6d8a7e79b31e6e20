import json

import pytest
import torch

from swarm.data import DatasetError, data_slice, encode_batch, load_texts, split_dataset
from swarm.model import ModelLoadError, base_model_fingerprint, build_lora_model, build_tiny_model, load_base_model, lora_parameters
from swarm.shards import ShardError, partition_parameters
from swarm.spec import LoraSpec
from swarm.tokenizer import ByteTokenizer


def test_tiny_preset_is_identical_everywhere_and_fingerprinted():
    first, second = build_tiny_model(), build_tiny_model()
    assert base_model_fingerprint(first) == base_model_fingerprint(second)
    with torch.no_grad():
        next(second.parameters()).add_(1e-3)
    assert base_model_fingerprint(first) != base_model_fingerprint(second)


def test_lora_init_is_seeded():
    a = lora_parameters(build_lora_model(build_tiny_model(), LoraSpec(), seed=3))
    b = lora_parameters(build_lora_model(build_tiny_model(), LoraSpec(), seed=3))
    c = lora_parameters(build_lora_model(build_tiny_model(), LoraSpec(), seed=4))
    assert list(a) == list(b)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)


def test_unknown_models_get_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_base_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="unknown base model 'nomoat-test/definitely-not-a-model'"):
        load_base_model("nomoat-test/definitely-not-a-model")


def test_local_model_directory_loads_with_from_pretrained(tmp_path):
    build_tiny_model().save_pretrained(tmp_path / "m")
    with pytest.raises(ModelLoadError):  # a model folder without a tokenizer is refused, not half-loaded
        load_base_model(str(tmp_path / "m"))


def test_shards_partition_by_layer_ranges():
    names = list(lora_parameters(build_lora_model(build_tiny_model(), LoraSpec(), seed=0)))
    two = partition_parameters(names, num_layers=4, shards=2)
    assert sorted(two[0] + two[1]) == sorted(names)
    assert all(".layers.0." in n or ".layers.1." in n for n in two[0])
    assert all(".layers.2." in n or ".layers.3." in n for n in two[1])
    with pytest.raises(ShardError, match="cannot exceed"):
        partition_parameters(names, num_layers=4, shards=5)


def test_datasets_load_split_and_slice(tmp_path):
    texts = load_texts("sample")
    assert len(texts) == 2000 and texts == load_texts("sample")
    split = split_dataset(texts, 0.1, seed=0)
    assert len(split.eval) == 200 and len(split.train) == 1800
    assert sorted(split.train + split.eval) == sorted(texts)
    assert split == split_dataset(texts, 0.1, seed=0)
    slices = [data_slice(split.train, 4, i) for i in range(4)]
    assert sum(len(s) for s in slices) == len(split.train)
    (tmp_path / "d.jsonl").write_text('{"text": "a b"}\n\n{"text": "c d"}\n')
    assert load_texts(str(tmp_path / "d.jsonl")) == ["a b", "c d"]
    (tmp_path / "d.txt").write_text("one\n\ntwo\n")
    assert load_texts(str(tmp_path / "d.txt")) == ["one", "two"]


def test_dataset_errors_name_file_and_line(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_texts(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:2"):
        load_texts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DatasetError, match="'text'"):
        load_texts(str(tmp_path / "nofield.jsonl"))
    (tmp_path / "one.txt").write_text("only\n")
    with pytest.raises(DatasetError, match="at least 2"):
        load_texts(str(tmp_path / "one.txt"))


def test_encode_batch_pads_and_masks():
    tokenizer = ByteTokenizer()
    ids, labels = encode_batch(["ab", "abcdefghij"], tokenizer, seq_len=6)
    assert ids[0].tolist() == [256, 97, 98, 257, 258, 258]
    assert labels[0].tolist() == [256, 97, 98, 257, -100, -100]
    assert ids[1].tolist() == [256, 97, 98, 99, 100, 101]
