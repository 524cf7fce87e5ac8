"""Crash matrix (issue 3): SIGKILL a child engine at named crash points, reopen, check every acknowledged write.

``driver`` is the child-process workload (``python -m tests.crash.driver``), ``check`` replays its
acknowledgement log into an expected state and verifies a reopened data directory against it, and
``test_crash_matrix`` runs the matrix (fast: 20 seeds per point; ``slow``: 200).
"""
