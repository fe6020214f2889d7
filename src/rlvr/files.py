"""User files in, run files out, with errors that name the file (and line) and the fix.

* :func:`safe_load_unique`: ``yaml.safe_load`` that refuses a key given twice in one mapping
  (PyYAML silently keeps the last one, dropping a whole block of settings);
* :func:`decode_utf8`: bytes of a text file as str, a UTF-8 byte order mark accepted, other
  non-UTF-8 bytes a ConfigError naming the line and column;
* :func:`writing`: an ``OSError`` while writing run output (full disk, read-only directory) becomes
  an RLVRError naming the path and what to do.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rlvr.errors import ConfigError, RLVRError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse repeated keys (``<<`` merge keys may still be overridden)."""

    source = "YAML"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    seen = first_line.get(key)
                except TypeError:  # unhashable key: the base constructor reports it
                    continue
                line = key_node.start_mark.line + 1
                if seen is not None:
                    raise ConfigError(
                        f"'{self.source}' line {line}: key '{key}' is given twice in the same mapping (first on "
                        f"line {seen}); YAML would silently keep only the last one, so merge the two or delete one"
                    )
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str | bytes, source: str) -> Any:
    """``yaml.safe_load(text)``, but a key repeated within one mapping raises a ConfigError naming
    ``source`` and both lines. Syntax errors raise ``yaml.YAMLError`` as ``safe_load`` does."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def decode_utf8(data: bytes, where: str, first_line: int = 1) -> str:
    """``data`` decoded as UTF-8 without a leading byte order mark.

    Invalid bytes raise a ConfigError ``"<where> line <n>: ..."``, ``n`` counted from ``first_line``.
    """
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{where} line {line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8 text; "
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)"
        ) from None


_OUTPUT_FIXES = {
    errno.ENOSPC: "free space on that disk or choose another {setting}",
    errno.EDQUOT: "free space within your disk quota or choose another {setting}",
    errno.EROFS: "the file system is read-only; choose another {setting}",
    errno.EACCES: "choose a {setting} you can write to (or fix its permissions)",
    errno.EPERM: "choose a {setting} you can write to (or fix its permissions)",
}


def output_error(path: Path | str, exc: OSError, setting: str = "output_dir") -> RLVRError:
    """The RLVRError for ``exc`` raised while writing ``path``: the path, the reason and the fix."""
    target = exc.filename or path
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = _OUTPUT_FIXES.get(exc.errno or 0, "check that path, or choose another {setting}").format(setting=setting)
    return RLVRError(f"cannot write {target}: {reason}; {fix}")


@contextlib.contextmanager
def writing(path: Path | str, setting: str = "output_dir") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :func:`output_error` for ``path``."""
    try:
        yield
    except OSError as exc:
        raise output_error(path, exc, setting) from exc
