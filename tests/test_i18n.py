"""Rows in the user's language: the catalogs cover every string, and a row pushed over SSE
(rendered in a background thread, without a request) reads in the sender's language."""

from __future__ import annotations

import gettext
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import translation

from taskstate.core.models import Status, Task
from taskstate.web.channels import user_channel
from tests.testapp import tasks as actors

PACKAGE = Path(__file__).resolve().parent.parent / "taskstate"
LANGUAGES = ("fr", "de", "es", "pt_BR")
NO_GETTEXT = shutil.which("msgfmt") is None or shutil.which("xgettext") is None

# What a finished row says, per language: its status and "took ...".
FINISHED = {
    "fr": ("Terminée", "a duré"),
    "de": ("Fertig", "dauerte"),
    "es": ("Terminada", "duró"),
    "pt-br": ("Concluída", "levou"),
}


def _entries(po: Path) -> list[tuple[list[str], str, list[str]]]:
    """(flags, msgid, msgstrs) of each entry of a .po file but its header."""
    entries = []
    for block in po.read_text(encoding="utf-8").split("\n\n")[1:]:
        flags = [line for line in block.splitlines() if line.startswith("#,")]
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            match = re.match(r"^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d\])?) (\".*\")$", line)
            if match:
                key = match.group(1)
                fields[key] = match.group(2)[1:-1]
            elif line.startswith('"') and key:
                fields[key] += line[1:-1]
        if "msgid" in fields:
            strs = [v for k, v in fields.items() if k.startswith("msgstr")]
            entries.append((flags, fields["msgid"], strs))
    return entries


@pytest.mark.skipif(NO_GETTEXT, reason="gettext tools missing (apt-get install gettext)")
def test_makemessages_finds_no_string_missing_from_any_catalog(tmp_path, monkeypatch):
    copy = tmp_path / "taskstate"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "vendor"))
    monkeypatch.chdir(copy)
    call_command("makemessages", locale=list(LANGUAGES), no_location=True, verbosity=0)
    for language in LANGUAGES:
        po = copy / "locale" / language / "LC_MESSAGES" / "django.po"
        untranslated = [
            msgid
            for flags, msgid, strs in _entries(po)
            if any("fuzzy" in f for f in flags) or not all(strs)
        ]
        assert untranslated == [], f"{language}: new or changed strings {untranslated}"


@pytest.mark.skipif(NO_GETTEXT, reason="gettext tools missing (apt-get install gettext)")
@pytest.mark.parametrize("language", LANGUAGES)
def test_compiled_catalog_matches_its_source(language, tmp_path):
    source = PACKAGE / "locale" / language / "LC_MESSAGES" / "django.po"
    fresh = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(fresh), str(source)], check=True)
    shipped = PACKAGE / "locale" / language / "LC_MESSAGES" / "django.mo"
    with fresh.open("rb") as a, shipped.open("rb") as b:
        assert gettext.GNUTranslations(a)._catalog == gettext.GNUTranslations(b)._catalog  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("language", sorted(FINISHED))
def test_row_pushed_over_sse_reads_in_the_senders_language(language, run_all, user, capture_events):
    capture = capture_events(user_channel(user.pk))
    # As in a view under LocaleMiddleware: the request's language is active at send time.
    with translation.override(language):
        message = actors.returns.send(1, for_state={"user_pk": user.pk, "description": "Export"})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.language == language
    assert task.status == Status.DONE
    rows = [data for _, _, data in capture.events() if "<hx-upsert" in data]
    # What the page keeps (taskstate.js): the row with the highest order key. The sender's
    # "enqueued" row may be announced after the worker's "done" when its thread is
    # descheduled between its write and its announcement.
    final = max(rows, key=lambda row: int(re.search(r'data-taskstate-order="(\d+)"', row)[1]))
    assert 'data-status="done"' in final
    status, took = FINISHED[language]
    assert status in final and took in final, final
    assert "Dismiss" not in final.replace("taskstate-dismiss", "")


@pytest.mark.django_db(transaction=True)
def test_row_of_a_task_sent_without_a_language_reads_in_the_sites_language(
    run_all, user, capture_events
):
    capture = capture_events(user_channel(user.pk))
    with translation.override(None):
        message = actors.returns.send(1, for_state={"user_pk": user.pk, "description": "Export"})
    run_all()
    assert Task.objects.get(message_id=message.message_id).language == ""
    rows = [data for _, _, data in capture.events() if "<hx-upsert" in data]
    assert "Done" in rows[-1] and ">Dismiss<" in rows[-1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["group", "pipeline"])
def test_a_group_or_pipeline_row_pushed_over_sse_reads_in_the_senders_language(
    kind, run_all, user, capture_events
):
    import dramatiq

    import taskstate

    capture = capture_events(user_channel(user.pk))
    if kind == "group":
        composition = dramatiq.group([actors.returns.message(1), actors.returns.message(2)])
    else:  # each step's result is the next one's argument
        composition = dramatiq.pipeline([actors.returns.message(1), actors.returns.message()])
    with translation.override("fr"):
        tracked = taskstate.track_group(
            composition, for_state={"user_pk": user.pk, "description": "Lot"}
        )
        tracked.run()
    run_all()
    parent = Task.objects.get(pk=tracked.task.pk)
    assert parent.language == "fr"
    assert set(Task.objects.filter(parent=parent).values_list("language", flat=True)) == {"fr"}
    rows = [data for _, _, data in capture.events() if f"taskstate-task-{parent.pk}" in data]
    assert rows, "the group's row was never sent"
    # Every row sent, not only the last: "En attente"/"En cours", then "Terminée".
    for row in rows:
        assert "Cancel" not in row and "Running" not in row and "Dismiss" not in row, row
    status, took = FINISHED["fr"]
    assert 'data-status="done"' in rows[-1]
    assert status in rows[-1] and took in rows[-1], rows[-1]
