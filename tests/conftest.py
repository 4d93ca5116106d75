"""Fixtures shared by the whole suite.

``demo_guest`` is the demo guest (:class:`engine.guest.GuestArtifacts`),
built once per session, or found in the per-user cache in milliseconds. A
cold build downloads the Debian kernel package and boots the guest once under
TCG to read its symbols (about 15 s); when that fails (no network, no apt
lists) the tests that use it error with the builder's message instead of
skipping.
"""

from __future__ import annotations

import pytest

from engine.guest import GuestArtifacts, build_demo_guest


@pytest.fixture(scope="session")
def demo_guest() -> GuestArtifacts:
    return build_demo_guest()


@pytest.fixture(scope="session")
def demo_recording(demo_guest, tmp_path_factory):
    """A finished recording of the demo guest running memchurn (128 MiB, a
    checkpoint every 2 s) until the guest powers off after memchurn's three
    rounds, so what it holds does not depend on how busy the machine is. Made
    once per session, with the recorder's proofs (which replace any
    record-mode checkpoint that the replay does not reproduce). Returns the
    recording's path; tests must not change it (copy it first)."""
    import asyncio

    from engine.qemu import MachineSpec
    from engine.recording.format import Recording
    from engine.recording.recorder import Recorder

    path = tmp_path_factory.mktemp("demo-recording") / "memchurn"
    spec = MachineSpec(memory_mib=128, kernel=str(demo_guest.kernel),
                       initrd=str(demo_guest.initrd), append=demo_guest.append_for("memchurn"))
    recorder = Recorder(path, spec, interval=2.0, duration=180.0,
                        guest_info={"workload": "memchurn",
                                    "system_map_source": str(demo_guest.system_map)})
    summary = asyncio.run(recorder.run())
    assert summary.status == "complete", summary
    # every interval, the last one too, was proven (what the app's stopping screen counts)
    assert recorder.proof_progress == (summary.checkpoints, summary.checkpoints), \
        (recorder.proof_progress, summary)
    assert "system_map" in Recording.open(path).manifest.guest
    return path
