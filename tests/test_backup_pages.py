"""
Admin → Backup through StubTreq, and the scheduled backups with a
C{task.Clock}: a backup downloaded, a change made, the backup restored over
it (all or nothing, every refusal with its reason), the operator refused,
and the schedule writing, pruning and failing visibly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cipherd.backups import ScheduledBackups
from cipherd.core.counters import BACKUP_FAILURE, BACKUP_MADE
from cipherd.settings import GLOBAL
from cipherd.store.audit import AuditQuery
from cipherd.store.backup import MAGIC
from cipherd.testing import result_of
from tests.harness import GOOD_PASSWORD, AdminHarness
from tests.test_admin_roles import log_in_as, make

PASSPHRASE = "correct horse battery backup"


def download(admin: AdminHarness, passphrase: str = PASSPHRASE,
             confirm: str | None = None) -> Any:
    return admin.post_form("/admin/backup", {"passphrase": passphrase,
                                              "confirm": passphrase if confirm is None
                                              else confirm})


def restore(admin: AdminHarness, data: bytes, passphrase: str = PASSPHRASE,
            replace: str = "yes") -> Any:
    return admin.post_file("/admin/backup/restore", data, form_page="/admin/backup",
                           passphrase=passphrase, replace=replace)


def comment(admin: AdminHarness) -> str:
    return str(result_of(admin.settings.get(GLOBAL, "comment")))


def test_a_downloaded_backup_restores_what_was_there(admin_in: AdminHarness) -> None:
    admin = admin_in
    page = admin.get("/admin/backup")
    assert page.code == 200 and "Download backup" in page.text and "Restore" in page.text
    result_of(admin.settings.update(GLOBAL, {"comment": "before the backup"}))
    got = download(admin)
    assert got.code == 200, got.text
    assert got.body.startswith(MAGIC)
    assert got.header("Content-Type") == "application/octet-stream"
    assert got.header("Content-Disposition").startswith('attachment; filename="cipherd-')
    # Sent, then deleted from the data dir.
    assert list(admin.data.scratch.iterdir()) == []

    result_of(admin.settings.update(GLOBAL, {"comment": "after the backup"}))
    done = restore(admin, got.body)
    assert done.code == 200, done.text
    assert "Backup restored" in done.text and "Log in again" in done.text
    assert comment(admin) == "before the backup"
    # Every session ended, this one too.
    assert admin.get("/").code == 303
    entries = result_of(admin.audit.find(AuditQuery(action="backup")))
    assert [e.action for e in entries] == ["backup.restore"]


@pytest.fixture
def backed_up(admin_in: AdminHarness) -> tuple[AdminHarness, bytes]:
    result_of(admin_in.settings.update(GLOBAL, {"comment": "in the backup"}))
    got = download(admin_in)
    assert got.code == 200
    result_of(admin_in.settings.update(GLOBAL, {"comment": "now"}))
    return admin_in, got.body


@pytest.mark.parametrize(("change", "why"), [
    ("wrong passphrase", "Nothing was restored: wrong passphrase: the backup cannot be "
                         "opened with it."),
    ("flipped byte", "Nothing was restored: the backup is damaged: its checksum does not "
                     "match its contents"),
    ("not a backup", "Nothing was restored: this is not a cipherd backup"),
    ("no tick", "Tick the box to say everything may be replaced."),
    ("no file", "Choose a backup file."),
])
def test_a_refused_restore_says_why_and_changes_nothing(
        backed_up: tuple[AdminHarness, bytes], change: str, why: str) -> None:
    admin, data = backed_up
    passphrase, replace = PASSPHRASE, "yes"
    if change == "wrong passphrase":
        passphrase = "another passphrase"
    elif change == "flipped byte":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif change == "not a backup":
        data = b"%PDF-1.7\n" + os.urandom(500)
    elif change == "no tick":
        replace = ""
    elif change == "no file":
        data = b""
    refused = restore(admin, data, passphrase, replace)
    assert refused.code == 400
    assert why in refused.text.replace("&#39;", "'")
    assert comment(admin) == "now"
    assert admin.get("/admin/backup").code == 200  # still signed in


def test_a_backup_of_another_appliance_is_restored_only_on_the_command_line(
        backed_up: tuple[AdminHarness, bytes], tmp_path: Path) -> None:
    admin, _ = backed_up
    (tmp_path / "other").mkdir()
    other = AdminHarness(tmp_path / "other")
    try:
        other.login_with_new_password()
        theirs = download(other).body
    finally:
        other.close()
    refused = restore(admin, theirs)
    assert refused.code == 400
    assert "made under another key-encryption key" in refused.text
    assert "twistd cipherd restore" in refused.text
    assert comment(admin) == "now"


def test_passphrases_that_differ_or_are_short_are_refused(admin_in: AdminHarness) -> None:
    differ = download(admin_in, confirm="something else entirely")
    assert differ.code == 400 and "The two passphrases differ." in differ.text
    short = download(admin_in, "short")
    assert short.code == 400 and "at least 12 characters" in short.text


def test_an_operator_reads_the_page_but_neither_backs_up_nor_restores(
        backed_up: tuple[AdminHarness, bytes]) -> None:
    admin, data = backed_up
    make(admin, "olivia", "operator")
    log_in_as(admin, "olivia")
    page = admin.get("/admin/backup")
    assert page.code == 200 and 'class="read-only"' in page.text
    csrf = admin.csrf_from(page)
    assert admin.post_form("/admin/backup", {"passphrase": PASSPHRASE,
                                              "confirm": PASSPHRASE}, csrf=csrf).code == 403
    refused = admin.post_file("/admin/backup/restore", data, form_page="/admin/backup",
                              passphrase=PASSPHRASE, replace="yes")
    assert refused.code == 403
    assert comment(admin) == "now"


def scheduled(admin: AdminHarness, **values: Any) -> ScheduledBackups:
    result_of(admin.settings.update(GLOBAL, {
        "backup_enabled": True, "backup_schedule": "0 0 * * * ?", "backup_keep": 2,
        "backup_passphrase": PASSPHRASE, **values}))
    return ScheduledBackups(admin.store, admin.backups, admin.settings, admin.counters,
                            admin.runner, admin.clock, "node-1")


def test_scheduled_backups_are_written_on_time_and_the_oldest_deleted(
        admin_in: AdminHarness, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    # Not this appliance's scheduled backups: never pruned.
    others = ["cipherd-scheduled-00000000-20200101T000000Z-node-1.cdbk",
              "cipherd-node-1-20200101T000000Z.cdbk", "notes.txt"]
    for name in others:
        (directory / name).write_bytes(b"theirs")
    job = scheduled(admin_in, backup_directory=str(directory))
    result_of(job.tick())  # the first look: the schedule counts from now
    # The passphrase as typed is sealed under the KEK at the first tick.
    stored = result_of(admin_in.settings.get(GLOBAL, "backup_passphrase"))
    assert stored.startswith("sealed:") and PASSPHRASE not in stored
    assert sorted(p.name for p in directory.iterdir()) == sorted(others)
    ours = f"cipherd-scheduled-{admin_in.backups.appliance}-"
    names: list[str] = []
    for _ in range(3):
        admin_in.clock.advance(3600)
        result_of(job.tick())
        names = sorted(p.name for p in directory.iterdir() if p.name.startswith(ours))
        # Within the same hour: nothing more.
        result_of(job.tick())
        assert sorted(p.name for p in directory.iterdir()
                      if p.name.startswith(ours)) == names
    assert len(names) == 2 and all(n.endswith("-node-1.cdbk") for n in names)
    assert all((directory / n).stat().st_mode & 0o777 == 0o600 for n in names)
    assert all((directory / n).exists() for n in others)
    assert admin_in.counters.take().marks[BACKUP_MADE].detail == names[-1]
    # Made under the sealed passphrase, which restores it.
    log_in_as(admin_in, "admin", GOOD_PASSWORD)  # hours idle: signed out
    restored = restore(admin_in, (directory / names[-1]).read_bytes())
    assert restored.code == 200, restored.text
    log_in_as(admin_in, "admin", GOOD_PASSWORD)
    page = admin_in.get("/admin/backup").text
    assert names[-1] in page and names[0] in page and others[0] not in page


def test_a_scheduled_backup_that_cannot_be_written_is_an_error_on_the_dashboard(
        admin_in: AdminHarness, tmp_path: Path) -> None:
    job = scheduled(admin_in, backup_directory=str(tmp_path / "missing"))
    result_of(job.tick())
    admin_in.clock.advance(3600)
    result_of(job.tick())
    assert "cannot write" in admin_in.counters.take().marks[BACKUP_FAILURE].detail
