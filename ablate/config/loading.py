"""Config files read safely (size, depth and alias limits, duplicate keys refused, UTF-8 only) and dotted keys:
`a.b.c=value` overrides onto a tree, and a tree flattened back to dotted keys."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ablate.errors import AblateError, missing_reason, os_reason, path_kind, shown

# a study, trial or search space file is a few KiB: anything far bigger or deeper is a mistake or an attack
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64  # nesting levels of lists and mappings
MAX_YAML_NODES = 100_000  # values after aliases are expanded (an alias "billion laughs" stops here)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with limits on depth and expanded size, and duplicate keys refused."""

    depth = 0

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_YAML_DEPTH:  # '[[[[...': stopped in the scanner, whose simple-key bookkeeping
            raise AblateError(f"line {self.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels "  # is quadratic
                              "(the limit for a config file)")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:  # block nesting: indentation levels
                raise AblateError(f"line {self.peek_event().start_mark.line + 1}: nested deeper than "
                                  f"{MAX_YAML_DEPTH} levels (the limit for a config file)")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node):
        count, todo = 0, [node]
        while todo:  # every value as often as aliases repeat it, without building anything
            count += 1
            if count > MAX_YAML_NODES:
                raise AblateError(f"more than {MAX_YAML_NODES} values once aliases are expanded "
                                  "(the limit for a config file)")
            item = todo.pop()
            if isinstance(item, yaml.SequenceNode):
                todo.extend(item.value)
            elif isinstance(item, yaml.MappingNode):
                todo.extend(n for pair in item.value for n in pair)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<: *defaults' may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first:
                        raise AblateError(f"line {line}: duplicate key {key!r} (first at line {first[key]}); "
                                          "keep one")
                    first[key] = line
                except TypeError:
                    pass  # an unhashable key: PyYAML's own error says so
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, text: str | None = None):
    """The YAML document in `path` (or `text`, read from it) under _Loader's limits; errors name the file."""
    try:
        if text is None:
            text = decode(read_config_bytes(path))
        return yaml.load(text, Loader=_Loader)
    except AblateError as e:
        raise AblateError(f"{shown(path)}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AblateError(f"{shown(path)}: YAML syntax error{at}: {problem}") from None


def read_config_bytes(path: Path) -> bytes:
    """A config file's bytes, its size checked before it is read; what the system refuses as an AblateError."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise AblateError(f"{size} bytes, more than the {MAX_YAML_BYTES} a config file may have")
        return path.read_bytes()
    except OSError as e:  # permission denied, an I/O error: a file that was there a moment ago
        raise AblateError(f"cannot read it ({os_reason(e)})") from None


def decode(raw: bytes) -> str:
    """UTF-8 text (a UTF-8 byte-order mark is dropped); anything else is refused with where it went wrong."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise AblateError("UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise AblateError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}, column {column}); "
                          "save it as UTF-8") from None


def load_yaml(path: str | Path) -> dict:
    """Safe-load a YAML mapping; syntax errors become one line with the file and position."""
    path = Path(path)
    kind = path_kind(path)  # a name too long, a loop of links: AblateError
    if kind is None:
        raise AblateError(f"{shown(path)}: {missing_reason(path)}")
    if kind != "file":  # a FIFO would block the read until something writes to it
        what = "a folder" if kind == "folder" else "not a regular file (a FIFO, a device or a socket)"
        raise AblateError(f"{shown(path)}: {what}; give a YAML file")
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AblateError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str], source: str = "command line", nested: bool = True) -> dict:
    """Return a copy of `data` with `a.b.c=value` overrides applied (values parsed as YAML).

    nested=False sets the dotted key itself (a search space's keys are dotted paths)."""
    data = copy.deepcopy(data)
    given: dict[str, str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AblateError(f"{source}: override {item!r} is not of the form key.path=value")
        if key in given:  # as with a key written twice in a file: the user meant both
            raise AblateError(f"{source}: {key} is given twice ({given[key]!r} and {raw!r}); keep one")
        given[key] = raw
        try:
            value = yaml.load(raw, Loader=_Loader)
        except yaml.YAMLError:
            value = raw
        except AblateError as e:
            raise AblateError(f"{source}: {key}: {e}") from None
        node = data
        parts = key.split(".") if nested else [key]
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise AblateError(f"{source}: {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (MLflow params, report columns)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out
