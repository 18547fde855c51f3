"""`--help` of the wadi commands: what the command does and its own options, with the comments of its YAML.

Hydra's own `--help` lists every config group of the search path and the whole composed config, without the
comments that explain the keys; for `wadi.sample` that meant the training groups. Here each command prints its
module docstring, then the keys of its config file (conf/<command>.yaml, and a `@package _global_` group it
includes, such as conf/generation/default.yaml) with their defaults and comments, and the groups it selects.
Hydra's own help stays available as `--hydra-help`. The comments are read from the YAML, so they are the one
place an option is documented.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

HIDDEN = {"hydra", "module", "generation"}  # internal wiring: interpolations of the keys shown
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<rest>.*)$")
_COMMENT = re.compile(r"(?:^|\s+)#\s?(?P<comment>.*)$")


def _split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a '#' inside quotes is kept in the value."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def _is_global(path: Path) -> bool:
    return path.is_file() and "@package _global_" in path.read_text().split("\n", 1)[0]


def _group_options(conf_dir: Path, group: str) -> list[str]:
    folder = conf_dir / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def read_options(path: Path, conf_dir: Path) -> tuple[list[str], list[tuple]]:
    """(header comment lines, entries) of a config file: ("section", text), ("key", name, value, comment) or
    ("group", name, default, options, comment). Nested nodes give "node.key" entries (one level)."""
    header: list[str] = []
    entries: list[tuple] = []
    seen_key = False
    block: str | None = None  # the indent-0 key whose indented lines are being read
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if "@package" in text:
                continue
            if not seen_key:
                header.append(text)
            elif not line.startswith(" "):
                entries.append(("section", text))
            continue
        if block == "defaults" and stripped.startswith("- "):
            item, comment = _split_comment(stripped[2:])
            if ":" not in item or item.startswith("override ") or item == "_self_":
                continue
            group, default = (s.strip() for s in item.split(":", 1))
            group = group.removeprefix("optional ").strip()
            group_path = conf_dir / group
            options = _group_options(conf_dir, group)
            included = group_path / f"{default}.yaml"
            if group in HIDDEN and _is_global(
                included
            ):  # generation/default.yaml: its keys are the command's
                entries.extend(read_options(included, conf_dir)[1])
            elif group_path.is_dir():
                entries.append(("group", group, default, options, comment))
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        key, (value, comment) = match["key"], _split_comment(match["rest"])
        if not match["indent"]:
            seen_key = True
            block = key
            if key in HIDDEN or key == "defaults":
                continue
            if value:
                entries.append(("key", key, value, comment))
            elif comment:
                entries.append(("section", f"{key}: {comment}"))
        elif len(match["indent"]) == 2 and block not in (None, "defaults", *HIDDEN) and key != "_target_":
            entries.append(("key", f"{block}.{key}", value or "...", comment))
    return header, entries


def render_help(
    command: str, doc: str | None, config: str, conf_dir: Path, only: set[str] | None = None
) -> str:
    """The help text of `command` (module docstring + the options of conf_dir/config)."""
    path = conf_dir / config
    header, entries = read_options(path, path.parent)  # groups live beside the file (conf/toy_pretrain/arch)
    lines = [f"python -m {command} [key=value ...]", ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append(f"Options (key=value; defaults from conf/{config} and the files it includes):")
    for entry in entries:
        if entry[0] == "section":
            if only is None:
                lines.append(f"  # {entry[1]}")
            continue
        name = entry[1]
        if only is not None and name.split(".")[0] not in only:
            continue
        if entry[0] == "group":
            _, _, default, options, comment = entry
            shown = "|".join(options) if len(options) <= 8 else "|".join(options[:8]) + "|..."
            text = f"  {name}=<{shown}>"
            comment = f"(default {default}) {comment}".strip()
        else:
            _, _, value, comment = entry
            value = value if len(value) <= 40 else value[:37] + "..."
            text = f"  {name}={value}"
        lines.append(f"{text:<44} {comment}".rstrip() if comment else text)
    lines += ["", "Hydra's own options: --hydra-help (and --cfg job to print the composed config)."]
    return "\n".join(lines)


def exit_if_help(
    argv: Sequence[str], command: str, doc: str | None, config: str, only: set[str] | None = None
) -> None:
    """With `--help` / `-h` in `argv`: print the command's help and exit 0 (before Hydra or any model loads)."""
    if "--help" in argv or "-h" in argv:
        from wadi.config import CONF_DIR

        print(render_help(command, doc, config, CONF_DIR, only))
        sys.exit(0)
