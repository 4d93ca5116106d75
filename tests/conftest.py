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
