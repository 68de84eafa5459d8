"""A strict JSON check for test assertions: what Java, Go and JavaScript parsers all accept.

Python's json is lenient (NaN/Infinity literals, lone surrogate escapes, numbers of any size); this
check refuses all of that, and refuses bytes that are not valid UTF-8. `node_rejects` cross-checks
values with Node.js (a fatal UTF-8 decoder, JSON.parse, then well-formed strings and finite numbers)
where node is installed.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
from typing import Any, Sequence

class NotStrictJSON(ValueError):
    pass


def _constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} literal")


def _number(text: str) -> float:
    value = float(text)  # float() takes any digit count; int() would stop at 4300 digits
    if not math.isfinite(value):
        raise NotStrictJSON(f"number {text[:30]} overflows a double")
    return value


def strict_json(value: bytes) -> Any:
    """The parsed document; raises (NotStrictJSON, UnicodeDecodeError, ValueError) unless it is strict JSON."""
    text = value.decode("utf-8")  # strict: invalid UTF-8 and encoded surrogates raise
    document = json.loads(text, parse_constant=_constant, parse_float=_number, parse_int=_number)
    try:  # a lone surrogate anywhere (key or value) cannot be encoded as UTF-8
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotStrictJSON(f"lone surrogate in a string: {exc}") from None
    return document


_NODE_CHECK = r"""
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean);
const decoder = new TextDecoder('utf-8', {fatal: true});
function walk(x) {
  if (typeof x === 'string') { if (!x.isWellFormed()) throw new Error('lone surrogate'); }
  else if (typeof x === 'number') { if (!Number.isFinite(x)) throw new Error('non-finite number'); }
  else if (Array.isArray(x)) { x.forEach(walk); }
  else if (x !== null && typeof x === 'object') { for (const k of Object.keys(x)) { walk(k); walk(x[k]); } }
}
const out = lines.map((line, i) => {
  try { walk(JSON.parse(decoder.decode(Buffer.from(line, 'base64')))); return null; }
  catch (e) { return String(e.message || e); }
});
process.stdout.write(JSON.stringify(out));
"""


def node_available() -> bool:
    return shutil.which("node") is not None


def node_rejects(values: Sequence[bytes], timeout_s: float = 60) -> dict[int, str]:
    """Index → Node's complaint, for every value Node's JSON.parse (plus the checks above) refuses."""
    payload = "\n".join(base64.b64encode(v).decode() for v in values) + "\n"
    done = subprocess.run(
        ["node", "-e", _NODE_CHECK], input=payload, capture_output=True, text=True, timeout=timeout_s, check=True
    )
    verdicts = json.loads(done.stdout)
    return {i: v for i, v in enumerate(verdicts) if v is not None}
