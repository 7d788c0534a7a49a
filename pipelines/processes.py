"""Whether a process still runs: staging folders (encode) and job locks (quality) left by a killed
process are taken over only once it is gone."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists on this host (another user's counts as alive)."""
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
