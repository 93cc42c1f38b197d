"""Core counts that the side-by-side training and the pool codec size their workers by."""

import os

import pytest

from vstk.pool.codec import default_threads
from vstk.resources import usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs an OS with CPU affinity")
def test_usable_cores_follow_the_affinity_mask():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == default_threads() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == len(before)
    assert default_threads() == min(8, len(before))
