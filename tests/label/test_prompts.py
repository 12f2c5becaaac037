"""Prompt templates: parts switched by the variant, versioned ids, placeholder checks."""

from __future__ import annotations

import pytest

from hirex.label.prompts import BUILTIN_TEMPLATES, Pair, Prompt, load_template

PAIR = Pair("q1", "d1", "how tall is everest", "Everest is 8,849 m high.", "heights", "a number")


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_render_every_variant(name):
    t = load_template(name)
    for variant in ("-", "R", "A", "RDNAM"):
        p = Prompt.build(t, variant, judges=3)
        msgs = p.messages(PAIR)
        user = msgs[-1]["content"]
        assert PAIR.query in user and PAIR.document in user
        assert (msgs[0]["role"] == "system") == ("R" in variant)
        assert ("heights" in user) == ("D" in variant)
        assert ('"M"' in user) == ("A" in variant)
        assert (f"[{', '.join([f'<0-{t.scale}>'] * 3)}]" in user) == ("M" in variant)
        assert set(p.json_schema()["required"]) == ({"M", "T", "O"} if "A" in variant else {"O"})


def test_scales_and_ids():
    assert load_template("umbrela").scale == 3 and load_template("thomas").scale == 2
    t = load_template("umbrela")
    assert t.id.startswith("umbrela@v1+") and Prompt.build(t).variant == "RA"


def test_edited_template_gets_a_new_id(tmp_path):
    src = load_template("umbrela").source
    assert "built-in" in src
    from importlib.resources import files

    text = files("hirex.label").joinpath("templates", "umbrela.toml").read_text()
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(text)
    b.write_text(text.replace("search quality rater", "search rater"))
    assert load_template(str(a)).id != load_template(str(b)).id


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("Query: {query}", "Query: {qury}"), r"lacks the placeholder \{query\}"),
        (("-----\n{document}", "-----\n{document} {extra}"), r"unknown placeholders \['extra'\]"),
        (('name = "umbrela"', ""), "needs `name`"),
        (("scale = 3", "scale = 9"), "top grade must be 1 to 4"),
    ],
)
def test_bad_templates(tmp_path, edit, message):
    from importlib.resources import files

    text = files("hirex.label").joinpath("templates", "umbrela.toml").read_text()
    assert edit[0] in text
    path = tmp_path / "t.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ValueError, match=message):
        load_template(str(path))


def test_bad_variants_and_pairs():
    t = load_template("umbrela")
    with pytest.raises(ValueError, match="use each of the letters RDNAM"):
        Prompt.build(t, "RX")
    with pytest.raises(FileNotFoundError, match="neither a built-in one"):
        load_template("nosuch")
    p = Prompt.build(t, "RD")
    with pytest.raises(ValueError, match="includes D but query 'q2' has no description"):
        p.messages(Pair("q2", "d", "query", "doc"))
    with pytest.raises(ValueError, match="has an empty document"):
        Prompt.build(t, "R").messages(Pair("q2", "d", "query", "  "))
