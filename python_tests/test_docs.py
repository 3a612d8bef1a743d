"""The docs cannot drift from their files: every rendered table equals what docs/render.py makes of the committed
JSON, and every relative link in the README and docs/ points at a committed file."""
import glob
import importlib.util
import os
import re
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
pytestmark = pytest.mark.skipif(not os.path.isdir(DOCS), reason="docs/ is not in this tree")


def _render():
    spec = importlib.util.spec_from_file_location("docs_render", os.path.join(DOCS, "render.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_rendered_table_matches_its_files():
    render = _render()
    assert render.stale() == [], "python docs/render.py rewrites them"
    seen = set()
    for page in render.PAGES:
        seen.update(m.group(2) for m in render._BLOCK.finditer(open(os.path.join(ROOT, page)).read()))
    assert seen == set(render.TABLES), "every table is on a page, every block names a table"


def test_a_hand_edited_number_is_caught(tmp_path):
    render = _render()
    for page in render.PAGES:
        os.makedirs(tmp_path / os.path.dirname(page), exist_ok=True)
        shutil.copy(os.path.join(ROOT, page), tmp_path / page)
    page = tmp_path / "docs" / "softlabel" / "README.md"
    text = page.read_text()
    block = render._BLOCK.search(text)
    numbers = list(re.finditer(r"\d\.\d{3}", block.group(3)))
    assert numbers, "the Softlabel table has numbers"
    at = block.start(3) + numbers[0].start()
    old = text[at:at + 5]
    page.write_text(text[:at] + ("9.999" if old != "9.999" else "8.888") + text[at + 5:])
    assert render.stale(root=str(tmp_path)) == [("docs/softlabel/README.md", "softlabel-seeds")]


def test_an_unknown_table_name_is_an_error():
    render = _render()
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        render.render("<!-- render nope -->\n| x |\n<!-- /render -->")


def _pages():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))


@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_at_committed_files(page):
    text = open(page).read()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:|#", target):
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        if not os.path.exists(path):
            missing.append(target)
    assert not missing, f"{os.path.relpath(page, ROOT)} links to missing files: {missing}"
