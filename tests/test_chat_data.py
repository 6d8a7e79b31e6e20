"""Instruction and chat data: rows read through ``datasets`` from JSONL, JSON, Parquet and CSV files made here,
rendered with a chat template (nomoat's default, and a real transformers tokenizer's own), answers-only labels,
packing, the digest, row-level errors, the dataset folders and the Hub refusal, the spec fields and the wire."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from coordinator.dataset_sources import DatasetSources
from coordinator.dataset_vault import DatasetVault
from nomoat_proto import coordinator_pb2 as pb
from swarm.chat_template import DEFAULT_TEMPLATE, render_conversation, render_prompt
from swarm.data import IGNORE_INDEX, DatasetError, encode_batch, encode_sample, iterate_batches
from swarm.dataset_files import HubDataset, parse_hub_dataset
from swarm.evaluation import eval_loss
from swarm.model import build_tiny_model
from swarm.sample_wire import SliceError, SliceReader, chunks_of
from swarm.samples import Formatting, Sample, dataset_digest
from swarm.spec import RunSpec, SpecError, build_spec
from swarm.tokenizer import ByteTokenizer, HuggingFaceTokenizer
from swarm.training_data import ParsedDataset, render_dataset

BYTES = ByteTokenizer()
ALPACA = [{"instruction": f"add {i} and 1", "input": "" if i % 2 else f"{i}+1", "output": f"{i + 1}"}
          for i in range(6)]
CHATS = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"},
                       {"role": "assistant", "content": f"hello {i}"}, {"role": "user", "content": "bye"},
                       {"role": "assistant", "content": "ciao"}]} for i in range(6)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path.name


@pytest.fixture()
def folder(tmp_path):
    data = tmp_path / "datasets"
    data.mkdir()
    write_jsonl(data / "alpaca.jsonl", ALPACA)
    (data / "alpaca.json").write_text(json.dumps(ALPACA))
    pd.DataFrame(ALPACA).to_parquet(data / "alpaca.parquet")
    pd.DataFrame(ALPACA).to_csv(data / "alpaca.csv", index=False)
    write_jsonl(data / "chat.jsonl", CHATS)
    pd.DataFrame(CHATS).to_parquet(data / "chat.parquet")
    pd.DataFrame({"messages": [json.dumps(row["messages"]) for row in CHATS]}).to_csv(data / "chat.csv", index=False)
    return data


def chatml_tokenizer() -> HuggingFaceTokenizer:
    """A real transformers tokenizer (byte-level BPE without merges) with a ChatML template: built here, offline."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: index for index, char in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    hf.chat_template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return HuggingFaceTokenizer(hf)


def trained_text(sample, tokenizer) -> str:
    ids, labels = encode_sample(sample, tokenizer)
    return tokenizer.decode([label for label in labels if label != IGNORE_INDEX])


@pytest.mark.parametrize("name", ["alpaca.jsonl", "alpaca.json", "alpaca.parquet", "alpaca.csv"])
def test_instruction_rows_load_through_datasets_from_every_file_type(folder, name):
    parsed = DatasetSources([folder]).parse(name)
    assert parsed.data_format == "instruction" and parsed.source == name and len(parsed.records) == 6
    assert parsed.records[0] == [{"role": "user", "content": "add 0 and 1\n\n0+1"},
                                 {"role": "assistant", "content": "1"}]
    assert parsed.records[1][0] == {"role": "user", "content": "add 1 and 1"}  # no input: the instruction alone


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.parquet", "chat.csv"])
def test_chat_rows_load_through_datasets(folder, name):
    parsed = DatasetSources([folder]).parse(name, "chat")
    assert parsed.data_format == "chat" and parsed.records[2] == CHATS[2]["messages"]


def test_the_default_template_renders_and_labels_mask_exactly_the_prompt_tokens():
    sample = render_conversation(CHATS[0]["messages"], BYTES, train_on_prompts=False)
    assert sample.text == ("<|system|>\nbe brief<|end|>\n<|user|>\nhi 0<|end|>\n<|assistant|>\nhello 0<|end|>\n"
                           "<|user|>\nbye<|end|>\n<|assistant|>\nciao<|end|>\n")
    ids, labels = encode_sample(sample, BYTES)
    assert len(ids) == len(labels) == len(sample.text.encode()) + 2
    expected = [IGNORE_INDEX]  # BOS
    for text, trainable in sample.segments:
        expected += list(text.encode()) if trainable else [IGNORE_INDEX] * len(text.encode())
    assert labels == expected + [BYTES.eos_token_id]  # the last answer's EOS is trained on
    assert trained_text(sample, BYTES) == "hello 0<|end|>\nciao<|end|>\n"
    everything = render_conversation(CHATS[0]["messages"], BYTES, train_on_prompts=True)
    assert encode_sample(everything, BYTES)[1][1:] == encode_sample(everything, BYTES)[0][1:]
    assert render_prompt(CHATS[0]["messages"][:2], BYTES) == "<|system|>\nbe brief<|end|>\n<|user|>\nhi 0<|end|>\n" \
                                                               "<|assistant|>\n"


def test_a_models_own_chat_template_renders_through_apply_chat_template():
    tokenizer = chatml_tokenizer()
    sample = render_conversation(CHATS[0]["messages"], tokenizer, train_on_prompts=False)
    assert not sample.text.startswith("<s>")  # encoding adds BOS itself
    assert sample.segments[0] == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi 0<|im_end|>\n"
                                  "<|im_start|>assistant\n", False)
    assert sample.segments[1] == ("hello 0<|im_end|>\n", True)
    ids, labels = encode_sample(sample, tokenizer)
    kept = [label for label in labels if label != IGNORE_INDEX]
    assert tokenizer.hf.decode(kept) == "hello 0<|im_end|>\nciao<|im_end|>\n</s>"
    samples, formatting = render_dataset(DatasetSources().parse("sample"), tokenizer, False, False)
    assert formatting.template == "none"
    _, chat_formatting = render_dataset(ParsedDataset("c", "chat", [CHATS[0]["messages"]]), tokenizer, False, False)
    assert chat_formatting.template.startswith("hf:sha256:") and chat_formatting.template != DEFAULT_TEMPLATE


def test_packing_fills_seq_len_and_keeps_the_masks():
    samples = [render_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                   BYTES, False)] * 40
    ids, labels = encode_sample(samples[0], BYTES)
    assert len(ids) == 43 and sum(label != IGNORE_INDEX for label in labels) == 10  # 'a<|end|>\n' and EOS
    _, packed, packed_labels = next(iterate_batches(samples, BYTES, seq_len=130, batch_size=3, seed=0, packing=True))
    assert packed.shape == (3, 130)
    assert (packed != BYTES.pad_token_id).sum(dim=1).tolist() == [129] * 3  # three whole samples per row
    assert packed[0, :43].tolist() == ids and packed[0, 43:86].tolist() == ids
    assert packed_labels[0, :129].tolist() == labels * 3
    _, unpacked, _ = next(iterate_batches(samples, BYTES, seq_len=130, batch_size=3, seed=0))
    assert (unpacked != BYTES.pad_token_id).sum(dim=1).tolist() == [43] * 3


def test_the_digest_covers_format_template_masking_and_packing():
    texts = ["one", "two"]
    assert dataset_digest(texts) == "sha256:" + hashlib.sha256(json.dumps(texts).encode()).hexdigest()  # as before
    conversation = CHATS[0]["messages"]
    masked = [render_conversation(conversation, BYTES, False)]
    unmasked = [render_conversation(conversation, BYTES, True)]
    digests = {
        dataset_digest(masked, Formatting("chat", DEFAULT_TEMPLATE, False, False)),
        dataset_digest(unmasked, Formatting("chat", DEFAULT_TEMPLATE, True, False)),
        dataset_digest(masked, Formatting("chat", DEFAULT_TEMPLATE, False, True)),
        dataset_digest(masked, Formatting("instruction", DEFAULT_TEMPLATE, False, False)),
        dataset_digest(masked, Formatting("chat", "hf:sha256:00", False, False)),
        dataset_digest([sample.text for sample in masked]),
        dataset_digest([sample.text for sample in masked], Formatting("text", "none", False, True)),
    }
    assert len(digests) == 7


@pytest.mark.parametrize("name, rows, message", [
    ("alpaca.jsonl", ALPACA[:2] + [{"instruction": "x"}], "alpaca.jsonl row 3: 'output' is missing"),
    ("alpaca.jsonl", ALPACA[:1] + [{"instruction": "x", "output": "   "}], "alpaca.jsonl row 2: 'output' is empty"),
    ("chat.parquet", CHATS[:2] + [{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}],
     "chat.parquet row 3: message 2 has role 'robot'; expected system, user or assistant"),
    ("chat.jsonl", [CHATS[0], {"messages": [{"role": "user", "content": "a"}]}],
     "chat.jsonl row 2: no assistant message, so nothing to train on"),
    ("chat.jsonl", [CHATS[0], {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                                            {"role": "assistant", "content": "b"}]}],
     "chat.jsonl row 2: message 2 is a system message; only the first message may be one"),
    ("chat.jsonl", [CHATS[0], {"messages": []}], "chat.jsonl row 2: 'messages' must be a non-empty list"),
    ("text.jsonl", [{"text": "a"}, {"text": None}], "text.jsonl row 2: 'text' is missing"),
    ("other.jsonl", [{"prompt": "a"}, {"prompt": "b"}], "other.jsonl: no 'messages' (chat), 'instruction' and "
                                                        "'output' (instruction) or 'text' column"),
])
def test_bad_rows_name_the_file_row_and_field(tmp_path, name, rows, message):
    if name.endswith(".parquet"):
        pd.DataFrame(rows).to_parquet(tmp_path / name)
    else:
        write_jsonl(tmp_path / name, rows)
    with pytest.raises(DatasetError) as refused:
        DatasetSources([tmp_path]).parse(name)
    assert str(refused.value).startswith(message)


def test_a_file_that_is_not_json_and_a_format_that_does_not_fit_are_refused(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{nope\n')
    with pytest.raises(DatasetError, match=r"^broken.jsonl: cannot be read as a dataset"):
        DatasetSources([tmp_path]).parse("broken.jsonl")
    write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    with pytest.raises(DatasetError, match="alpaca.jsonl row 1: 'messages' is missing"):
        DatasetSources([tmp_path]).parse("alpaca.jsonl", "chat")


def test_a_path_escaping_the_dataset_folder_is_refused_and_the_hub_only_where_allowed(folder, tmp_path):
    write_jsonl(tmp_path / "outside.jsonl", CHATS)
    (folder / "link.parquet").symlink_to(folder / "chat.parquet")  # a link inside the folder is fine
    assert DatasetSources([folder]).parse("link.parquet").data_format == "chat"
    (folder / "out.jsonl").symlink_to(tmp_path / "outside.jsonl")
    for name in ["../outside.jsonl", str(tmp_path / "outside.jsonl"), "out.jsonl"]:
        with pytest.raises(DatasetError, match="not a file in this coordinator's dataset folders"):
            DatasetSources([folder]).parse(name)
    with pytest.raises(DatasetError, match="does not load Hub datasets .*--allow-hub-datasets"):
        DatasetSources([folder]).parse("hub:tatsu-lab/alpaca")
    with pytest.raises(DatasetError, match="is not a Hub dataset id"):
        DatasetSources([folder], allow_hub=True).parse("hub:../../etc")


def test_hub_dataset_ids_parse_with_an_optional_split_and_revision():
    assert parse_hub_dataset("hub:tatsu-lab/alpaca") == HubDataset("tatsu-lab/alpaca", "train", None)
    assert parse_hub_dataset("hub:org/name:test[:500]@v1.0") == HubDataset("org/name", "test[:500]", "v1.0")
    assert str(parse_hub_dataset("hub:org/name@abc123")) == "hub:org/name:train@abc123"
    for bad in ["hub:", "hub:name", "hub:org/name:", "hub:org/na me", "hub:org/../x", "hub:org/name@"]:
        with pytest.raises(DatasetError):
            parse_hub_dataset(bad)
    with pytest.raises(SpecError, match="dataset: .*not a Hub dataset id"):
        build_spec({"name": "h", "dataset": "hub:nope"})


def test_the_spec_fields_are_validated_and_leave_old_hashes_alone():
    plain = RunSpec(name="r", dataset="d.jsonl")
    assert "data_format" not in plain.to_json() and "packing" not in plain.to_json()
    chat = RunSpec(name="r", dataset="d.jsonl", data_format="chat", packing=True)
    assert chat.content_hash != plain.content_hash and RunSpec.from_json(chat.to_json()) == chat
    with pytest.raises(SpecError, match="data_format: Input should be 'auto', 'text', 'instruction' or 'chat'"):
        build_spec({"name": "r", "data_format": "sharegpt"})
    with pytest.raises(SpecError, match="train_on_prompts is for instruction and chat data"):
        build_spec({"name": "r", "dataset": "d.jsonl", "data_format": "text", "train_on_prompts": True})
    with pytest.raises(SpecError, match="'sample' is plain text"):
        build_spec({"name": "r", "data_format": "chat"})


def test_rendered_samples_survive_the_wire_and_a_hostile_slice_is_refused():
    samples = [render_conversation(chat["messages"], BYTES, False) for chat in CHATS] * 100
    chunks = list(chunks_of(samples))
    assert len(chunks) == 3 and not chunks[0].texts
    reader = SliceReader()
    for chunk in chunks:
        reader.add(pb.DataChunk.FromString(chunk.SerializeToString()))
    assert reader.samples() == samples
    plain = list(chunks_of(["a", "b"]))
    assert plain[0].texts == ["a", "b"] and not plain[0].samples  # what old workers read
    hostile = {
        "no trainable segment": pb.DataChunk(samples=[pb.FormattedSample(segments=[pb.SampleSegment(text="x")])]),
        "has 0 segments": pb.DataChunk(samples=[pb.FormattedSample()]),
        "characters, more than": pb.DataChunk(texts=["x" * (1024 * 1024 + 1)]),
    }
    for message, chunk in hostile.items():
        with pytest.raises(SliceError, match=message):
            SliceReader().add(chunk)
    with pytest.raises(SliceError, match="more than 2 samples"):
        limited = SliceReader(max_samples=2)
        limited.add(pb.DataChunk(texts=["a", "b", "c"]))
    with pytest.raises(SliceError, match="empty data slice"):
        SliceReader().samples()


def test_eval_loss_scores_only_the_answers():
    model = build_tiny_model()
    sample = render_conversation(CHATS[0]["messages"], BYTES, False)
    ids, labels = encode_batch([sample], BYTES, seq_len=128)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    targets = labels[:, 1:]
    answers = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[answers], targets[answers]).item()
    assert eval_loss(model, [sample], BYTES, seq_len=128) == pytest.approx(expected, rel=1e-5)
    assert eval_loss(model, [sample.text], BYTES, seq_len=128) != pytest.approx(expected, rel=1e-3)


def test_the_vault_keeps_rendered_samples_under_their_digest(tmp_path):
    vault = DatasetVault(tmp_path / "vault")
    samples = [render_conversation(chat["messages"], BYTES, False) for chat in CHATS]
    formatting = Formatting("chat", DEFAULT_TEMPLATE, False, True)
    digest = vault.put(samples, formatting)
    assert digest == dataset_digest(samples, formatting) and vault.get(digest) == samples
    assert vault.put(["a", "b"]) == dataset_digest(["a", "b"]) and vault.get(dataset_digest(["a", "b"])) == ["a", "b"]
    path = vault.path_of(digest)
    path.write_text(path.read_text().replace('"packing": true', '"packing": false'))
    with pytest.raises(DatasetError, match="does not match its digest"):
        vault.get(digest)
    assert isinstance(samples[0], Sample)
