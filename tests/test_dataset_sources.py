"""Datasets named in a launch are resolved only inside the operator's dataset folders."""

import pytest

from coordinator.dataset_sources import DatasetSources
from swarm.data import DatasetError


@pytest.fixture()
def folders(tmp_path):
    allowed = tmp_path / "datasets"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "stories.txt").write_text("one\ntwo\nthree\n")
    (allowed / "sub" / "chat.jsonl").write_text('{"text": "hi"}\n{"text": "there"}\n')
    secret = tmp_path / "secret-notes.txt"
    secret.write_text("password one\npassword two\n")
    (allowed / "escape.txt").symlink_to(secret)
    return allowed, secret


def test_files_inside_the_folders_load_by_relative_or_absolute_name(folders):
    allowed, _ = folders
    sources = DatasetSources([allowed])
    assert sources.load("stories.txt") == ["one", "two", "three"]
    assert sources.load("sub/chat.jsonl") == ["hi", "there"]
    assert sources.load(str(allowed / "stories.txt")) == ["one", "two", "three"]
    assert len(sources.load("sample")) > 100


@pytest.mark.parametrize("name", ["SECRET", "../secret-notes.txt", "escape.txt", "sub/../../secret-notes.txt",
                                  "~/.bashrc", "/etc/hostname", "/no/such/file.txt", "missing.txt", "sub"])
def test_anything_else_gets_one_answer_that_says_nothing_about_the_host(folders, name):
    allowed, secret = folders
    name = name.replace("SECRET", str(secret))
    with pytest.raises(DatasetError) as refused:
        DatasetSources([allowed]).load(name)
    assert str(refused.value) == (f"dataset '{name}' is not 'sample' and not a file in this coordinator's "
                                  f"dataset folders")


def test_without_folders_only_the_sample_dataset_launches(folders):
    allowed, _ = folders
    with pytest.raises(DatasetError, match="has no dataset folders"):
        DatasetSources().load(str(allowed / "stories.txt"))
    assert DatasetSources().load("sample")
