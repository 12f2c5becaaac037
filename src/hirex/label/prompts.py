"""Judging prompts built from switchable parts (Thomas et al., arXiv 2309.10621).

A template is a versioned TOML file (the built-in ones live in ``hirex/label/templates``):
``name``, ``version``, ``scale`` (the top grade: 2 for the paper's 0-2 scale, 3 for
UMBRELA's 0-3) and a ``[parts]`` table of texts. A *variant* switches the optional parts on,
one letter each, as in the paper:

- ``R`` role: the ``role`` text as the system message;
- ``D`` description and ``N`` narrative of the searcher's need (every pair must carry them);
- ``A`` aspects: score intent match ``M`` and trustworthiness ``T`` before the overall ``O``;
- ``M`` multiple judges: ask for ``judges`` independent overall scores and average them.

The query and the result's text (between the template's markers) are always in. The answer is
JSON only; :func:`Prompt.json_schema` gives the schema for backends that can constrain output.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import tomllib

__all__ = ["BUILTIN_TEMPLATES", "Pair", "Prompt", "Template", "load_template"]

VARIANT_LETTERS = "RDNAM"
_REQUIRED_PARTS = {"instructions": set(), "query": {"query"}, "document": {"document"}}
_OPTIONAL_PARTS = {
    "role": set(),
    "description": {"description"},
    "narrative": {"narrative"},
    "aspects": set(),
    "judges": {"judges"},
}
BUILTIN_TEMPLATES = ("umbrela", "thomas", "recommendation")


@dataclass(frozen=True)
class Pair:
    """One (query, result) pair to judge. ``qid`` and ``docid`` are the caller's ids, kept with
    the label; ``description`` and ``narrative`` are needed only by variants with D or N."""

    qid: str
    docid: str
    query: str
    document: str
    description: str = ""
    narrative: str = ""


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    scale: int
    parts: dict[str, str]
    default_variant: str
    sha256: str
    source: str

    @property
    def id(self) -> str:
        """``name@vN+sha8``: the version and the exact text, part of every cache key."""
        return f"{self.name}@v{self.version}+{self.sha256[:8]}"


def load_template(name_or_path: str) -> Template:
    """A built-in template by name (see ``BUILTIN_TEMPLATES``) or a TOML file by path."""
    if name_or_path in BUILTIN_TEMPLATES:
        resource = files("hirex.label").joinpath("templates", f"{name_or_path}.toml")
        data, source = resource.read_bytes(), f"built-in template {name_or_path!r}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"template {name_or_path!r} is neither a built-in one "
                f"({', '.join(BUILTIN_TEMPLATES)}) nor a file"
            )
        data, source = path.read_bytes(), str(path)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{source}: not a UTF-8 TOML template: {err}") from None
    return _check_template(raw, hashlib.sha256(data).hexdigest(), source)


def _check_template(raw: dict, sha: str, source: str) -> Template:
    for key, kind in (("name", str), ("version", int), ("scale", int), ("parts", dict)):
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"{source}: needs `{key}` ({kind.__name__})")
    if raw["scale"] not in (1, 2, 3, 4):
        raise ValueError(f"{source}: scale = {raw['scale']}; the top grade must be 1 to 4")
    parts = raw["parts"]
    known = {**_REQUIRED_PARTS, **_OPTIONAL_PARTS}
    unknown = set(parts) - set(known)
    if unknown:
        raise ValueError(f"{source}: unknown parts {sorted(unknown)}; valid: {sorted(known)}")
    missing = set(_REQUIRED_PARTS) - set(parts)
    if missing:
        raise ValueError(f"{source}: missing parts {sorted(missing)}")
    for part, text in parts.items():
        if not isinstance(text, str):
            raise ValueError(f"{source}: part {part!r} must be a string")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as err:
            raise ValueError(f"{source}: part {part!r}: {err} (write {{{{ for a brace)") from None
        need = known[part]
        if need - fields:
            raise ValueError(
                f"{source}: part {part!r} lacks the placeholder "
                f"{{{sorted(need - fields)[0]}}}; it must contain {sorted(need)}"
            )
        if fields - need:
            raise ValueError(
                f"{source}: part {part!r} has unknown placeholders {sorted(fields - need)}; "
                f"it may use only {sorted(need) or 'none'} (write {{{{ for a brace)"
            )
    variant = raw.get("default_variant", "R")
    _check_variant(variant, parts, source)
    return Template(
        name=raw["name"],
        version=raw["version"],
        scale=raw["scale"],
        parts=dict(parts),
        default_variant=variant,
        sha256=sha,
        source=source,
    )


def _check_variant(variant: str, parts: dict[str, str], source: str) -> None:
    bad = set(variant) - set(VARIANT_LETTERS)
    if bad or len(set(variant)) != len(variant):
        raise ValueError(
            f"variant {variant!r}: use each of the letters {VARIANT_LETTERS} at most once "
            "(R role, D description, N narrative, A aspects, M multiple judges), or '-' for none"
        )
    need = {"R": "role", "D": "description", "N": "narrative", "A": "aspects", "M": "judges"}
    for letter in variant:
        if need[letter] not in parts:
            raise ValueError(
                f"variant {variant!r} needs the part {need[letter]!r}; {source} lacks it"
            )


@dataclass(frozen=True)
class Prompt:
    """A template with a variant switched on; renders pairs into chat messages."""

    template: Template
    variant: str
    judges: int = 5

    @classmethod
    def build(cls, template: Template, variant: str | None = None, judges: int = 5) -> Prompt:
        variant = template.default_variant if variant is None else variant
        variant = "" if variant == "-" else variant
        _check_variant(variant, template.parts, template.source)
        if judges < 1:
            raise ValueError(f"judges = {judges}; need at least 1")
        return cls(template, "".join(sorted(variant, key=VARIANT_LETTERS.index)), judges)

    @property
    def scale(self) -> int:
        return self.template.scale

    @property
    def name(self) -> str:
        """``template/variant`` for tables, e.g. ``umbrela/RA``."""
        return f"{self.template.name}/{self.variant or '-'}"

    @property
    def n_scores(self) -> int:
        return self.judges if "M" in self.variant else 1

    def messages(self, pair: Pair) -> list[dict[str, str]]:
        p, v = self.template.parts, self.variant
        for letter, field_ in (("D", "description"), ("N", "narrative")):
            if letter in v and not getattr(pair, field_).strip():
                raise ValueError(
                    f"variant {v!r} includes {letter} but query {pair.qid!r} has no {field_}; "
                    f"drop {letter} from the variant or give every query a {field_}"
                )
        if not pair.document.strip():
            raise ValueError(f"pair ({pair.qid!r}, {pair.docid!r}) has an empty document")
        if not pair.query.strip():
            raise ValueError(f"query {pair.qid!r} is empty")
        blocks = [p["instructions"], p["query"].format(query=pair.query)]
        if "D" in v:
            blocks.append(p["description"].format(description=pair.description))
        if "N" in v:
            blocks.append(p["narrative"].format(narrative=pair.narrative))
        blocks.append(p["document"].format(document=pair.document))
        if "A" in v:
            blocks.append(p["aspects"])
        if "M" in v:
            blocks.append(p["judges"].format(judges=self.judges))
        blocks.append(self._output_instruction())
        out = [{"role": "user", "content": "\n\n".join(blocks)}]
        if "R" in v:
            out.insert(0, {"role": "system", "content": p["role"]})
        return out

    def _output_instruction(self) -> str:
        g = f"<0-{self.scale}>"
        fields = [f'"M": {g}', f'"T": {g}'] if "A" in self.variant else []
        final = f"[{', '.join([g] * self.judges)}]" if "M" in self.variant else g
        fields.append(f'"O": {final}')
        return "Produce only a JSON object, with no other text: {" + ", ".join(fields) + "}"

    def json_schema(self) -> dict:
        """The answer's JSON schema (for ``response_format`` / grammar-constrained decoding)."""
        grade = {"type": "integer", "enum": list(range(self.scale + 1))}
        props: dict[str, dict] = {}
        if "A" in self.variant:
            props["M"] = grade
            props["T"] = grade
        if "M" in self.variant:
            props["O"] = {
                "type": "array",
                "items": grade,
                "minItems": self.judges,
                "maxItems": self.judges,
            }
        else:
            props["O"] = grade
        return {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }
