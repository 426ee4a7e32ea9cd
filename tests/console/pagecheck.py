"""What every console page must hold to, checked in the browser on the page as drawn.

Layout: the page body never scrolls sideways (``scrollWidth <= innerWidth``; a
wide table scrolls inside its own box). Accessibility, by the DOM: the page
has ``lang``, an ``h1`` and headings that skip no level; every form control has
a label (``<label for>``, a wrapping label, ``aria-label`` or
``aria-labelledby``); every button and link has a name; every table header
cell has a ``scope``; every image has ``alt``, every canvas a label.
"""

from __future__ import annotations

from typing import Any

from tests.console.conftest import DESKTOP, PHONE

_PROBLEMS = """
() => {
  const problems = [];
  const shown = (e) => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
  const text = (e) => (e.textContent || "").trim();
  const labelledBy = (e) =>
    (e.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean)
      .map((id) => document.getElementById(id)).filter((x) => x && text(x)).length > 0;
  const snippet = (e) => e.outerHTML.slice(0, 160);
  if (document.documentElement.lang !== "en") problems.push("<html> has no lang=en");
  if (!document.querySelector("h1")) problems.push("no h1");
  let last = 0;
  for (const h of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
    const level = Number(h.tagName[1]);
    if (last && level > last + 1) problems.push(`heading skips from h${last} to h${level}: ${snippet(h)}`);
    if (!text(h)) problems.push(`empty heading: ${snippet(h)}`);
    last = level;
  }
  for (const c of document.querySelectorAll("input, select, textarea")) {
    if (c.type === "hidden" || !shown(c)) continue;
    const named = (c.labels && [...c.labels].some((l) => text(l))) ||
      (c.getAttribute("aria-label") || "").trim() || labelledBy(c);
    if (!named) problems.push(`control without a label: ${snippet(c)}`);
  }
  for (const b of document.querySelectorAll("button, [role=button], a[href], summary")) {
    if (!shown(b)) continue;
    const named = text(b) || (b.getAttribute("aria-label") || "").trim() || labelledBy(b) ||
      [...b.querySelectorAll("img[alt]")].some((i) => i.alt.trim());
    if (!named) problems.push(`${b.tagName.toLowerCase()} without a name: ${snippet(b)}`);
  }
  for (const th of document.querySelectorAll("th")) {
    if (!th.getAttribute("scope")) problems.push(`th without scope: ${snippet(th)}`);
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push(`img without alt: ${snippet(img)}`);
  }
  for (const canvas of document.querySelectorAll("canvas")) {
    const hidden = canvas.closest("[aria-hidden=true]");
    const named = (canvas.getAttribute("aria-label") || "").trim() || labelledBy(canvas) ||
      canvas.closest("figure, [role=img][aria-label]");
    if (!hidden && !named) problems.push(`canvas without a label: ${snippet(canvas)}`);
  }
  return problems;
}
"""

_OVERFLOW = """
() => ({
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  wide: [...document.body.querySelectorAll("*")]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
    .filter((e) => !e.closest("[data-scroll], .scroll, .table-wrap"))
    .slice(0, 5)
    .map((e) => e.outerHTML.slice(0, 120)),
})
"""


def accessibility_problems(page: Any) -> list[str]:
    problems: list[str] = page.evaluate(_PROBLEMS)
    return problems


def overflow(page: Any) -> dict[str, Any] | None:
    """None when the page body fits its width; else the widths and the widest elements."""
    seen: dict[str, Any] = page.evaluate(_OVERFLOW)
    return None if seen["scrollWidth"] <= seen["innerWidth"] else seen


def check_page(page: Any, ready: Any) -> None:
    """Check the page at 1280 px and at 390 px; ``ready`` is a locator to wait for
    after each resize (the page drawn)."""
    from playwright.sync_api import expect

    for viewport in (PHONE, DESKTOP):
        page.set_viewport_size(viewport)
        expect(ready.first).to_be_visible()
        assert overflow(page) is None, (viewport, page.url, overflow(page))
        assert accessibility_problems(page) == [], (page.url, accessibility_problems(page))
