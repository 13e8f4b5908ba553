"""The one place a private part of submitit is named (tests/test_submitit_private.py pins
it to the installed submitit version; tests/test_architecture.py keeps it the only one).

``LOCAL_CONTROLLER``: the module every local job's controller process runs
(``python -m submitit.local._local <folder>``). ``hpt-hpc status`` and ``cancel`` run in
another process than the one that submitted a local job, so they have no submitit handle
for it, only its id (the pid submitit started: the controller, or a shell running it).
submitit has no public way to ask whether that job's controller still runs, or to tell it
apart from a reused pid, so its command line is matched against this name. A submitit
upgrade that renames the module fails the pinned test, not a user's ``cancel``.
"""
SUBMITIT_VERSION = "1.5.4"  # the version this name was read from
LOCAL_CONTROLLER = "submitit.local._local"
