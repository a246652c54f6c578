"""What a person does on the page, as small functions the browser tests share."""
from __future__ import annotations

from typing import Any

from playwright.sync_api import FilePayload, Page, expect

RESULT_HEADING = "Your short link is ready"
# Rules the page must pass: WCAG 2.2 A and AA, axe's best practices, and AAA text contrast
# (the stylesheet promises 7:1). Only serious and critical findings fail a test.
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa",
                                                     "wcag22aa", "best-practice"]},
               "rules": {"color-contrast-enhanced": {"enabled": True}}}
FAILING_IMPACTS = {"serious", "critical"}


def shorten(page: Page, url: str, code: str = "") -> str:
    """Shorten url from the home page and return the short URL the result page shows."""
    page.goto("/")
    page.fill("#url", url)
    page.fill("#url-code", code)
    page.click("#url-form button[type=submit]")
    expect(page.get_by_role("heading", level=1)).to_have_text(RESULT_HEADING)
    return page.input_value("#short-url")


def upload(page: Page, name: str, data: bytes, code: str = "") -> None:
    """Choose a file (made in memory) and a short name, then submit the upload form."""
    page.goto("/")
    chosen: FilePayload = {"name": name, "mimeType": "application/octet-stream", "buffer": data}
    page.set_input_files("#file", files=[chosen])
    page.fill("#file-code", code)
    page.click("#file-form button[type=submit]")


def error_for(page: Page, field_id: str) -> str:
    """The error message attached to a field: it must be referenced by the field's
    aria-describedby and sit in the same .field group, right after the input."""
    page.wait_for_load_state()
    field = page.locator(f"#{field_id}")
    expect(field).to_have_attribute("aria-invalid", "true")
    described = (field.get_attribute("aria-describedby") or "").split()
    errors = [i for i in described if page.locator(f"#{i}.error").count()]
    assert len(errors) == 1, f"#{field_id} should describe exactly one error, got {described}"
    error = page.locator(f"#{errors[0]}")
    expect(error).to_be_visible()
    same_group = page.locator(f".field:has(#{field_id}) > #{errors[0]}")
    assert same_group.count() == 1, f"the error of #{field_id} is not next to it"
    return error.inner_text()


def axe_findings(page: Page, axe_source: str) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now; return every violation found.

    add_script_tag would be refused by the app's CSP (no inline script), which is the point
    of the CSP; evaluating the script through the DevTools protocol is not subject to it.
    """
    if page.evaluate("typeof window.axe") == "undefined":
        page.evaluate(axe_source)
    result: dict[str, Any] = page.evaluate("options => axe.run(document, options)", AXE_OPTIONS)
    ran = {rule["id"] for key in ("passes", "violations", "incomplete", "inapplicable")
           for rule in result[key]}
    assert "color-contrast" in ran and "label" in ran, "axe did not run its rules"
    return list(result["violations"])


def describe_findings(findings: list[dict[str, Any]]) -> str:
    return "\n".join(f"{f['impact']}: {f['id']}: {f['help']} at "
                     f"{[node['target'] for node in f['nodes']]}" for f in findings)


def serious_findings(findings: dict[str, list[dict[str, Any]]]) -> str:
    """The findings that fail a page (FAILING_IMPACTS), state by state; "" for none."""
    serious = {state: [f for f in found if f["impact"] in FAILING_IMPACTS]
               for state, found in findings.items()}
    return "\n".join(f"{state}:\n{describe_findings(found)}"
                     for state, found in serious.items() if found)
