"""swarm.paths.UserDirs: the user's folders resolved once from XDG_* (or the home folder)."""

from pathlib import Path

from swarm.paths import UserDirs


def test_user_dirs_follow_xdg_and_fall_back_to_the_home_folder(tmp_path):
    dirs = UserDirs.from_environment({"XDG_CONFIG_HOME": str(tmp_path / "c"), "XDG_CACHE_HOME": str(tmp_path / "k")})
    assert dirs == UserDirs(tmp_path / "c" / "nomoat", tmp_path / "k" / "nomoat")
    assert dirs.identity_key == tmp_path / "c" / "nomoat" / "identity.key"
    assert dirs.known_coordinators == tmp_path / "c" / "nomoat" / "known_coordinators.json"
    assert dirs.seen_versions == tmp_path / "c" / "nomoat" / "seen_versions.json"
    assert dirs.adapter_cache == tmp_path / "k" / "nomoat" / "adapters"
    home = UserDirs.from_environment({"XDG_CONFIG_HOME": ""})
    assert home == UserDirs(Path.home() / ".config" / "nomoat", Path.home() / ".cache" / "nomoat")
    assert UserDirs("~/x", "~/y").config == Path.home() / "x"
