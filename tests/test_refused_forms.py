"""
A refused form shows again exactly what was submitted, each error on its
own field and in words the page uses (labels, not setting keys), and
stores nothing: every field of every settings page, and the MTA config.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from cipherd.settings import GLOBAL, PAGES, Boolean, InvalidValue, Level, properties_on
from cipherd.testing import result_of
from tests.harness import AdminHarness
from tests.test_mta_config import ADVANCED_FORM


@pytest.fixture
def admin(signed_in_admin: AdminHarness) -> AdminHarness:
    return signed_in_admin


class Form(HTMLParser):
    """
    What a browser would show of a form's fields: C{values[name]} and the
    names of the ticked checkboxes.
    """

    def __init__(self, page: str) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.ticked: set[str] = set()
        self._select: str | None = None
        self._textarea: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        name = found.get("name") or ""
        if tag == "input" and found.get("type") == "checkbox":
            if "checked" in found:
                self.ticked.add(name)
        elif tag == "input" and found.get("type") != "hidden":
            self.values[name] = found.get("value") or ""
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select is not None and "selected" in found:
            self.values[self._select] = found.get("value") or ""
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            # The newline after the start tag is not part of the value.
            self.values[self._textarea] = self.values[self._textarea].removeprefix("\n")
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.values[self._textarea] += data


def field_errors(page: str) -> dict[str, str]:
    return {name: html.unescape(text)
            for name, text in re.findall(r'id="error\.([\w.]+)">([^<]*)<', page)}


@pytest.mark.parametrize("page", [p.name for p in PAGES
                                  if properties_on(p.name, Level.GLOBAL)])
def test_a_refused_settings_page_shows_every_field_as_it_was_typed(
        admin: AdminHarness, page: str) -> None:
    path = f"/settings/global/{page}?advanced=1"
    before = result_of(admin.settings.values(GLOBAL)).by_scope
    shown = Form(admin.get(path).text)
    typed: list[tuple[str, str]] = []
    expected: dict[str, str] = {}
    inheriting: set[str] = set()
    refused: set[str] = set()
    props = properties_on(page, Level.GLOBAL)
    # One text field at least is typed into: an unbalanced "(" is refused
    # by most (patterns, addresses, URLs, numbers).
    first_text = next((p.name for p in props if not p.secret
                       and p.type.widget not in ("checkbox", "select")), None)
    for n, prop in enumerate(props):
        typed.append(("fields", prop.name))
        field = f"value.{prop.name}"
        if n % 3 == 2 and not prop.generate and prop.name != first_text:
            # Set to inherit: the browser sends no value then.
            typed.append((f"inherit.{prop.name}", "on"))
            inheriting.add(prop.name)
            continue
        if prop.secret:
            # Left blank: it stays as it is, and is never shown.
            if f"inherit.{prop.name}" in shown.ticked:
                inheriting.add(prop.name)
            continue
        if isinstance(prop.type, Boolean):
            text = "false" if shown.values[field] == "true" else "true"
        elif prop.type.widget == "select":
            text = next(key for key, _ in prop.type.choices if key != shown.values[field])
        else:
            text = f"typed (for {prop.label}"
        typed.append((field, text))
        expected[field] = text
        try:
            prop.type.from_form(text)
        except InvalidValue:
            refused.add(prop.name)
    assert refused, f"nothing on {page} refused {expected}"
    answer = admin.post_form(path, typed)
    assert answer.code == 400, answer.text
    again = Form(answer.text)
    for field, text in expected.items():
        assert again.values[field] == text, field
    for prop in props:
        if not prop.generate:
            assert (f"inherit.{prop.name}" in again.ticked) == (prop.name in inheriting), \
                prop.name
    # Each error on its own field, and only there.
    assert set(field_errors(answer.text)) == refused
    assert result_of(admin.settings.values(GLOBAL)).by_scope == before


def test_a_boolean_typed_in_a_refused_form_is_not_turned_back(admin: AdminHarness) -> None:
    """
    The case the administrator met: *Password reset enabled* No and a
    portal base URL that is refused; the page came back saying Yes, and
    fixing the URL then stored an explicit Yes.
    """
    path = "/settings/global/preferences?advanced=1"
    form = [("fields", "password_reset_enabled"), ("value.password_reset_enabled", "false"),
            ("fields", "portal_base_url"), ("value.portal_base_url", "not a url")]
    answer = admin.post_form(path, form)
    assert answer.code == 400
    again = Form(answer.text)
    assert again.values["value.password_reset_enabled"] == "false"
    assert "inherit.password_reset_enabled" not in again.ticked
    assert list(field_errors(answer.text)) == ["portal_base_url"]


def test_the_mta_size_limits_are_refused_on_the_field_that_was_changed(
        admin: AdminHarness) -> None:
    assert admin.post_form("/mta/config", ADVANCED_FORM).code == 303
    stored = result_of(admin.site.backend.mta.refresh())
    for name, text, words in [
        ("before_filter_message_size_limit", "50000000",
         "must not be larger than the after filter message size limit (20,480,000 bytes)"),
        ("after_filter_message_size_limit", "2048",
         "must not be smaller than the before filter message size limit (10,240,000 bytes)"),
    ]:
        answer = admin.post_form("/mta/config", {**ADVANCED_FORM, name: text})
        assert answer.code == 400
        assert field_errors(answer.text) == {name: words}
        assert Form(answer.text).values[name] == text
    assert result_of(admin.site.backend.mta.refresh()) == stored
