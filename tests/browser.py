"""A page as a user's browser shows it: headless Chromium, its scripts run, the DOM they leave.

The browser reaches nothing but this machine (a hospital's network, and CI's): every host name
resolves nowhere except 127.0.0.1 and localhost, so a page that fetches a script from the internet
shows it by not rendering. ``make test`` installs Chromium (Debian's ``chromium``) where it is
missing; ``CHROMIUM`` names another binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
OFFLINE = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or next((path for name in NAMES if (path := shutil.which(name))), None)
    if not found:
        raise AssertionError("no Chromium for the browser tests: make test installs Debian's (apt-get install "
                             "chromium); elsewhere install it, or set CHROMIUM to a Chrome or Chromium binary")
    return found


def rendered(url: str, wait_ms: int = 20000, timeout: float = 120) -> str:
    """The DOM of ``url`` after its scripts ran (``wait_ms`` of the page's virtual time)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run([chromium(), *OFFLINE, f"--user-data-dir={profile}",
                                 f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                                capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"chromium failed on {url}:\n{result.stderr[-3000:]}"
    return result.stdout
