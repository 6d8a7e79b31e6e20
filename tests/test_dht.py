import time

from swarm.dht import RunAnnouncement, announce_run, lookup_runs, start_dht, visible_addresses


def test_run_announced_by_one_peer_is_found_by_another():
    first = start_dht()
    second = start_dht(visible_addresses(first))
    try:
        announcement = RunAnnouncement("demo", "sha256:abc", "127.0.0.1:50051")
        assert announce_run(first, announcement)
        found = {}
        deadline = time.monotonic() + 20
        while "demo" not in found and time.monotonic() < deadline:
            found = lookup_runs(second)
            time.sleep(0.2)
        assert found["demo"] == announcement
        announce_run(second, RunAnnouncement("other", "sha256:def", "127.0.0.1:50052"))
        assert set(lookup_runs(first)) == {"demo", "other"}
    finally:
        second.shutdown()
        first.shutdown()
