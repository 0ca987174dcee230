"""The README renders as meant (CommonMark with GitHub's tables) and its sample `up` output has the real one's shape."""

from __future__ import annotations

import re
from markdown_it import MarkdownIt
from markdown_it.token import Token

from conftest import ROOT

README = ROOT / "README.md"
QUICKSTART_SENTENCE = "Upload a scikit-learn model saved with skops and call it:"


def render(text: str) -> list[Token]:
    """Parse Markdown the way GitHub does for what the README uses: CommonMark plus tables."""
    return MarkdownIt("commonmark").enable("table").parse(text)


def enclosing(tokens: list[Token], needle: str) -> list[str]:
    """Return the open block tokens around the inline text that contains needle, outermost first."""
    stack: list[str] = []
    for token in tokens:
        if token.nesting == 1:
            stack.append(token.type)
        elif token.nesting == -1:
            stack.pop()
        elif token.type == "inline" and needle in token.content:
            return list(stack)
    raise AssertionError(f"{needle!r} is not in the rendered README")


def up_sample() -> list[str]:
    """Return the lines of the README's sample `up` output (the code block after "then something like:")."""
    tokens = render(README.read_text())
    after = next(i for i, t in enumerate(tokens) if t.type == "inline" and t.content.endswith("then something like:"))
    block = next(t for t in tokens[after:] if t.type == "fence")
    return block.content.splitlines()


def shape(line: str) -> str:
    """Reduce a line of `up`'s output to what does not change between runs: its labels and their order."""
    line = re.sub(r"mdk_\S+", "mdk_KEY", line)
    line = re.sub(r"(?<![\w/:])/[^\s,():]+", "PATH", line)  # absolute paths (not a URL's)
    line = re.sub(r"\d+", "9", line)
    return " ".join(line.split())


def test_the_quickstart_sentence_is_a_paragraph_not_a_table_row() -> None:
    tokens = render(README.read_text())
    assert enclosing(tokens, QUICKSTART_SENTENCE) == ["paragraph_open"]
    # The screenshots table still renders as a table of two cells per row.
    assert enclosing(tokens, "![Models page](docs/screenshots/models.png)")[:3] == ["table_open", "tbody_open", "tr_open"]


def test_every_relative_link_in_the_readme_points_at_a_file() -> None:
    inline = [t for t in render(README.read_text()) if t.type == "inline"]
    links = [c.attrs["href"] for t in inline for c in (t.children or []) if c.type == "link_open"]
    relative = [str(h).split("#")[0] for h in links if not str(h).startswith(("http://", "https://"))]
    assert relative and [h for h in relative if not (ROOT / h).exists()] == []


def test_the_readme_shows_calling_a_model_by_its_alias_and_how_long_the_first_run_takes() -> None:
    text = README.read_text()
    assert '"version": "production"' in text and "/aliases/production" in text
    assert "The first `up` takes about 2–3 minutes" in text
    assert "the suite then takes about 11 minutes" in text and "Debian's `chromium`" in text


def test_shape_keeps_labels_and_drops_what_varies() -> None:
    assert shape("  api         started            3.9 s  http://127.0.0.1:8600") == \
        shape("  api         started           13.2 s  http://127.0.0.1:41003")
    assert shape("  admin key: mdk_abc") == shape("  admin key: mdk_...")
    assert shape("  (also in /tmp/x/home/admin.key, mode 600)") == "(also in PATH, mode 9)"
    assert shape("  api         started  3.9 s") != shape("  worker-cpu  started  3.9 s")


def readme_sample_shapes() -> list[str]:
    """The README's sample `up` output, reduced by shape(); tests/test_cli.py compares a real `up` with it."""
    return [shape(line) for line in up_sample()]


def real_shapes(stdout: str) -> list[str]:
    """A real `up`'s stdout, reduced by shape()."""
    return [shape(line) for line in stdout.splitlines()]

