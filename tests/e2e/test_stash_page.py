"""The Stash page in a real browser against a real ``airflow standalone``.

The test writes the demo (``stash demo``), starts ``airflow standalone`` on a free port
with the environment ``make run`` uses, logs in through Airflow's login form in
headless Chromium (driven over the DevTools protocol, ``tests/cdp.py``), opens the
Stash page from the navigation, presses "Back up now" and waits for that run to
succeed and the snapshot count to rise. The screenshot is kept in ``test-artifacts/``.
An anonymous request to the page's API is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import Browser, chromium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed"),
]
ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = Path(os.environ.get("STASH_TEST_ARTIFACTS", ROOT / "test-artifacts"))
FRAME = "document.querySelector('iframe')?.contentDocument"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - loopback
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("standalone")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "stash", "demo", root / "demo"], check=True, capture_output=True)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "AIRFLOW_HOME": str(root / "airflow-home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__STASH__MANIFESTS_DIR": str(root / "demo" / "manifests"),
        "AIRFLOW__STASH__STATE_DIR": str(root / "demo" / "state"),
        "AIRFLOW__STASH__RUNTIME": "local",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
    }
    env.pop("AIRFLOW__METRICS__STATSD_ON", None)
    log = (root / "standalone.log").open("w")
    proc = subprocess.Popen(
        [bin_dir / "airflow", "standalone"],
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while get(f"{base}/api/v2/monitor/health") != 200:
            assert proc.poll() is None, (root / "standalone.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "airflow standalone did not start"
            time.sleep(1)
        password = json.loads((root / "passwords.json").read_text())["admin"]
        yield {"base": base, "password": password, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def snapshot_count(browser: Browser) -> int:
    text = browser.js(f"{FRAME}.querySelector('tr.target .snapshot-count').textContent")
    return int(text) if text and text.isdigit() else 0


def test_stash_page_backs_up_now_and_refuses_anonymous_requests(
    airflow: dict[str, Any],
) -> None:
    base = airflow["base"]
    assert get(f"{base}/stash/api/overview") == 401
    assert (
        get(
            f"{base}/stash/api/targets/stash-backup.demo.demo-backup.deployment.stash-demo/backup",
            "POST",
        )
        == 401
    )

    browser = Browser()
    try:
        # Log in through Airflow's own form.
        browser.goto(f"{base}/")
        browser.wait("!!document.querySelector('input[type=password]')", what="login form")
        browser.js("document.querySelector('input[name=username]').focus()")
        browser.type("admin")
        browser.js("document.querySelector('input[name=password]').focus()")
        browser.type(airflow["password"])
        browser.js("document.querySelector('button[type=submit]').click()")
        browser.wait("!location.pathname.startsWith('/auth')", what="the login")

        # The Stash entry of the navigation opens the page inside the Airflow UI.
        browser.wait("[...document.querySelectorAll('a')].some(a => a.textContent === 'Stash')")
        browser.js(
            "[...document.querySelectorAll('a')].find(a => a.textContent === 'Stash').click()"
        )
        browser.wait(
            f'!!{FRAME}?.querySelector(\'section.repo[data-repository="demo/local-repo"] '
            "tr.target')",
            timeout=60,
            what="the demo repository and its target on the Stash page",
        )
        assert "local volume at" in browser.js(f"{FRAME}.querySelector('section.repo').innerText")
        before = snapshot_count(browser)

        browser.js(f"{FRAME}.querySelector('button.backup-now').click()")
        run_id = browser.wait(
            f"({FRAME}.getElementById('message').textContent.match(/manual__stash-page__\\S+/)"
            " || [])[0]",
            what="the new run",
        )
        # The page opens the target's runs by itself after starting one.
        browser.wait(
            f"[...{FRAME}.querySelectorAll('tr.run-row')].some(r => "
            f"r.textContent.includes('{run_id}') && r.dataset.state === 'success')",
            timeout=150,
            what=f"run {run_id} to succeed",
        )
        browser.wait(
            f"Number({FRAME}.querySelector('tr.target .snapshot-count').textContent) > {before}",
            timeout=20,
            what="the snapshot count to rise",
        )
        assert snapshot_count(browser) > before
        shot = browser.screenshot(ARTIFACTS / "stash-page.png")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()
