"""`swarm demo` keeps its files in its own folder: after a real demo run (coordinator, two donor processes,
published versions, a pull), the user's config and cache folders are as they were, and the trusted coordinator
key, the pull cache and the workers' identities are in the demo's folder."""

from swarm.demo import DemoConfig, run_demo

USER_CONFIG = 'device = "cuda:7"\n'  # a donor that read the user's config.toml would fail on this machine


def test_the_demo_leaves_the_users_nomoat_folders_untouched(tmp_path, monkeypatch):
    config_home, cache_home = tmp_path / "home-config", tmp_path / "home-cache"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    (config_home / "nomoat").mkdir(parents=True)
    (config_home / "nomoat" / "config.toml").write_text(USER_CONFIG)

    result = run_demo(DemoConfig(workers=2, seconds=20, shards=1, workdir=tmp_path / "demo"))

    assert result.versions >= 2 and result.adapter_dir.is_dir()
    assert sorted(p.relative_to(config_home).as_posix() for p in config_home.rglob("*")) == [
        "nomoat", "nomoat/config.toml"]
    assert (config_home / "nomoat" / "config.toml").read_text() == USER_CONFIG
    assert not cache_home.exists()
    demo_user = tmp_path / "demo" / "user-config" / "nomoat"
    assert (demo_user / "known_coordinators.json").is_file() and (demo_user / "seen_versions.json").is_file()
    assert list((tmp_path / "demo" / "user-cache" / "nomoat" / "adapters").iterdir())
    assert sorted(p.name for p in (tmp_path / "demo").glob("worker*.key")) == ["worker0.key", "worker1.key"]
