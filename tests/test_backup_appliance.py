"""
Backup and restore across two data dirs, as an administrator moves the
webmail appliance to a new machine: a message tunnelled by the gateway and
read once in the portal, a backup downloaded from Admin → Backup in
Chromium and one made with C{twistd cipherd backup} while the appliance
runs; a fresh appliance directory refuses a wrong passphrase and a damaged
file with their reasons and stays as it was; the good backup restored with
C{twistd cipherd restore}; the new appliance started, and Dave reads the
message in its portal with his password; the admin logs in with hers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import create_engine, func, select

from cipherd.store import schema
from cipherd.store.backup import MAGIC
from tests.conftest import Appliance, free_port, write_appliance_config
from tests.test_browser_admin import DESKTOP, browser, log_in, shoot  # noqa: F401
from tests.test_mta_appliance import NEW_PASSWORD
from tests.test_portal_browser import link_in
from tests.test_webmail_accounts_browser import DAVE, DAVE_PASSWORD, dave_logs_in, send_to
from tests.test_webmail_appliance import FIRST, Pair, pair, sign_up, text_of  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PASSPHRASE = "ferry-quartz-meadow-backup-19"


def twistd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "--pidfile=", "cipherd", "--config",
         str(config), *args], cwd=config.parent, capture_output=True, text=True, timeout=120)


def messages_in(appliance_dir: Path) -> int:
    engine = create_engine(f"sqlite:///{appliance_dir / 'var' / 'cipherd.db'}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(
                schema.webmail_messages)).scalar_one())
    finally:
        engine.dispose()


def test_a_restored_appliance_reads_the_mail_tunnelled_before_the_backup(
        browser: Browser, pair: Pair, tmp_path: Path, artifacts: Path) -> None:  # noqa: F811
    pair.trust_the_gateway()
    send_to(pair, DAVE, FIRST)
    (invitation,) = pair.arrived(DAVE)
    assert "Your password is set" in sign_up(link_in(text_of(invitation), "/signup"),
                                             DAVE_PASSWORD)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")

    # Admin → Backup: a backup downloaded in the browser.
    admin = browser.new_context(base_url=pair.webmail.admin_url, ignore_https_errors=True,
                                viewport=DESKTOP, accept_downloads=True)
    try:
        page = admin.new_page()
        log_in(page, NEW_PASSWORD)
        page.goto("/admin/accounts")
        page.locator("nav.sub").get_by_role("link", name="Backup").click()
        expect(page.get_by_role("heading", name="Backup", exact=True)).to_be_visible()
        shoot(page, artifacts, "backup")
        page.get_by_label("Passphrase", exact=True).fill(PASSPHRASE)
        page.get_by_label("The same passphrase again").fill(PASSPHRASE)
        with page.expect_download() as download:
            page.get_by_role("button", name="Download backup").click()
        downloaded = tmp_path / download.value.suggested_filename
        download.value.save_as(downloaded)
        assert downloaded.name.endswith(".cdbk")
        assert downloaded.read_bytes().startswith(MAGIC)
        # The passphrases must match: the page says so.
        page.get_by_label("Passphrase", exact=True).fill(PASSPHRASE)
        page.get_by_label("The same passphrase again").fill(PASSPHRASE + "x")
        page.get_by_role("button", name="Download backup").click()
        expect(page.get_by_role("alert")).to_have_text("The two passphrases differ.")
        shoot(page, artifacts, "backup-refused")
    finally:
        admin.close()

    # The command line, while the appliance runs.
    made = twistd(pair.webmail.config, "backup", "--to", str(tmp_path / "cli.cdbk"),
                  "--passphrase-file", str(passphrase_file))
    assert made.returncode == 0, made.stderr
    assert "1 webmail messages" in made.stdout and "1 webmail accounts" in made.stdout

    # The new machine: its own directory and ports, never started.
    new = tmp_path / "new"
    new.mkdir()
    admin_port, smtp_port, portal_port = free_port(), free_port(), free_port()
    config = write_appliance_config(new, admin_port, smtp_port, portal_port=portal_port)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    refused = twistd(config, "restore", "--from", str(downloaded), "--passphrase-file",
                     str(wrong))
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("cipherd restore: wrong passphrase: the backup cannot "
                                      "be opened with it")
    damaged = tmp_path / "damaged.cdbk"
    data = bytearray(downloaded.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    refused = twistd(config, "restore", "--from", str(damaged), "--passphrase-file",
                     str(passphrase_file))
    assert refused.returncode == 1
    assert "the backup is damaged: its checksum does not match" in refused.stderr
    # Nothing changed: the backup is checked whole before anything is made.
    assert not (new / "var").exists()
    # Nor is a running appliance restored over.
    running = twistd(pair.webmail.config, "restore", "--from", str(downloaded),
                     "--passphrase-file", str(passphrase_file))
    assert running.returncode == 1
    assert "stop cipherd before a restore" in running.stderr

    restored = twistd(config, "restore", "--from", str(downloaded), "--passphrase-file",
                      str(passphrase_file))
    assert restored.returncode == 0, restored.stderr
    assert "Restored the backup made by node" in restored.stdout
    assert "The key-encryption key is the backup's" in restored.stdout
    assert "Scheduled backups are off" in restored.stdout
    assert (new / "var" / "kek").read_bytes() == (pair.webmail.data_dir / "kek").read_bytes()
    assert messages_in(new) == 1
    # Once restored, a second restore without --replace is refused.
    again = twistd(config, "restore", "--from", str(tmp_path / "cli.cdbk"),
                   "--passphrase-file", str(passphrase_file))
    assert again.returncode == 1 and "restore with --replace" in again.stderr

    pair.webmail.stop()  # the old machine goes away
    moved = Appliance(new, config, admin_port, smtp_port, portal_port=portal_port)
    moved.start()
    try:
        portal = browser.new_context(base_url=moved.portal_url, ignore_https_errors=True,
                                     viewport=DESKTOP)
        try:
            page = portal.new_page()
            dave_logs_in(page)
            page.get_by_role("link", name="Contract draft").click()
            expect(page.locator("main")).to_contain_text("the draft.")
            page.screenshot(path=artifacts / "portal-restored-message.png", full_page=True)
        finally:
            portal.close()
        admin = browser.new_context(base_url=moved.admin_url, ignore_https_errors=True,
                                    viewport=DESKTOP)
        try:
            page = admin.new_page()
            log_in(page, NEW_PASSWORD)
            # The audit log came along (up to the moment of the backup).
            page.goto("/audit")
            expect(page.locator("main")).to_contain_text("changed the MTA config")
        finally:
            admin.close()
    finally:
        moved.stop()
