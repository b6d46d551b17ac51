"""A retrieval benchmark in a domain of its own, built offline from the system's manual pages
(/usr/share/man: commands, system calls, C library, file formats, administration).

  python bench/manpage_set.py --out=DIR [--man_dir=/usr/share/man]

Query: a page's one-line NAME description ("list directory contents", "open and possibly create a
file"). Relevant document (exactly one): that page's DESCRIPTION (else its first section after
NAME and SYNOPSIS), titled with the page's names and section, `ls(1)`, as `man -k` would list it.
Queries found verbatim in any document, shared by several pages, or under 3 words are dropped
(their pages stay in the corpus as distractors), so that matching the string finds nothing.
Pages are split by name hash: test (about 20%) for evaluation, train for an in-domain fine-tune
(the domain-adaptation benchmark fine-tunes on other data and only evaluates here).

Besides the BEIR folder, `unlabeled.jsonl` holds every page's text without its NAME line (one
page a line, paragraphs separated by blank lines): the in-domain text a user would have, for
continued pretraining (`--config.data.source=jsonl:DIR/unlabeled.jsonl`).

Scope: English pages in man1-man8, read from the roff source (no renderer), one file per page:
links and `.so` redirects are skipped. The Google Cloud SDK's generated gcloud_* pages (thousands
of near-copies: alpha/beta/GA of every command) are left out. Which pages exist depends on the
packages installed, so manpage_set.json records the counts per section; on one machine image the
set is always the same (files are read in sorted order).
"""

import functools
import gzip
import hashlib
import json
import os
import re
import sys
import tempfile

from absl import app, flags, logging

# `python bench/manpage_set.py` from anywhere: the package is the repository's, not installed.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from retromae_jax.data.evalsets import beir  # noqa: E402
from retromae_jax.data.evalsets import pydoc_set  # noqa: E402

SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8")
_TEST_SHARE = 5  # one page in five (by hash of its name) goes to the test split
_MIN_QUERY_WORDS = 3
_MIN_BODY_CHARS = 120
_MAX_BODY_CHARS = 4000  # longer pages are cut (the evaluation reads 256 tokens at most anyway)
_SKIPPED_PREFIXES = ("gcloud_",)

# Inline roff: font changes, sizes, strings, named characters, escapes.
_NAMED = {"em": "-", "en": "-", "hy": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'",
          "cq": "'", "bu": "*", "co": "(c)", "rg": "(R)", "ti": "~", "ha": "^", "mi": "-",
          "pl": "+", "eq": "=", "<=": "<=", ">=": ">=", "->": "->", "<-": "<-", "mu": "x",
          "ga": "`", "ul": "_", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "dg": "+"}
_INLINE = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # \fB \fI \fR \fP \f(CW \f[B]
    (re.compile(r"\\s[-+]?\d"), ""),  # \s-1 \s0
    (re.compile(r"\\\*(\[[^\]]*\]|\(..|.)"), ""),  # \*(lq and other strings
    (re.compile(r"\\\((..)"), lambda m: _NAMED.get(m.group(1), "")),
    (re.compile(r"\\\[([^\]]*)\]"), lambda m: _NAMED.get(m.group(1), "")),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), lambda _: "\\"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\[&|^%c:,/){}!]"), ""),
    (re.compile(r"\\[nkhvwzoxXNuYZ]('[^']*'|\[[^\]]*\]|\(..|.)?"), ""),
    (re.compile(r"\\."), ""),  # whatever is left
]
# Macros that open a paragraph; the rest of their line (if any) is text (e.g. .IP "tag").
_PARAGRAPH = {"PP", "LP", "P", "TP", "TQ", "IP", "HP", "sp", "br", "Pp", "Bl", "It", "Sh", "SS",
              "Ss", "nf", "fi", "RS", "RE", "Bd", "Ed", "El", "EX", "EE"}
# Font and markup macros: their arguments are text.
_FONT = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "UR", "MT", "Nm", "Fl", "Ar",
         "Op", "Xr", "Pa", "Cm", "Ic", "Dq", "Sq", "Qq", "Ql", "Em", "Li", "Va", "Ev", "Fn", "Fa",
         "Ft", "Fd", "Dv", "Er", "Sy", "Ad", "An", "Lk", "Mt", "Tn", "Ux", "At", "Bx", "Ox",
         "Nx", "Fx", "Aq", "Bq", "Pq", "Brq", "Oo", "Oc", "No", "Ns", "Sx", "Vt", "Cd", "St",
         "D1", "Dl", "Ql"}
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}  # arguments joined without spaces


def _inline(text: str) -> str:
  for pattern, repl in _INLINE:
    text = pattern.sub(repl, text)
  return text


def _arguments(rest: str) -> list[str]:
  """roff macro arguments: whitespace-separated, "double quoted" ones may hold spaces."""
  return [a[1:-1] if a.startswith('"') else a
          for a in re.findall(r'"(?:[^"]|"")*"?|\S+', rest)]


def parse(source: str):
  """(sections {NAME: [paragraphs]} in page order) of one man page's roff (man or mdoc)."""
  sections, current, paragraph = {}, None, []

  def flush():
    if paragraph and current is not None:
      text = re.sub(r"\s+", " ", " ".join(paragraph)).strip()
      if text:
        sections.setdefault(current, []).append(text)
    paragraph.clear()

  in_definition = False
  for line in source.splitlines():
    if in_definition:  # .de NAME ... .. : a macro definition, no text
      in_definition = not line.startswith("..")
      continue
    if line.startswith((".\\\"", "'\\\"", '.\\"', "\\\"")) or line.strip() in (".", "'"):
      continue
    if line.startswith((".", "'")):
      match = re.match(r"[.']\s*(\S+)\s*(.*)", line)
      if not match:
        continue
      macro, rest = match.groups()
      if macro in ("de", "de1", "am"):
        in_definition = True
        continue
      if macro in ("SH", "Sh"):
        flush()
        current = " ".join(_arguments(_inline(rest))).upper().strip()
        continue
      if macro in ("Nd",):  # mdoc's NAME description
        paragraph.append("- " + _inline(rest))
        continue
      if macro in _PARAGRAPH:
        flush()
        if macro in ("IP", "SS", "Ss", "It") and rest:
          args = _arguments(_inline(rest))
          paragraph.append(" ".join(args[:1] if macro == "IP" else args))
        continue
      if macro in _FONT:
        args = _arguments(_inline(rest))
        paragraph.append(("" if macro in _ALTERNATING else " ").join(args))
      continue  # any other request (.if, .ds, .nr, .TH, .ft, ...) carries no prose
    paragraph.append(_inline(line))
  flush()
  return sections


def _name_line(paragraphs: list[str]):
  """(names, description) from a NAME section ("ls, dir \\- list directory contents")."""
  text = " ".join(paragraphs)
  match = re.match(r"(.+?)\s+-+\s+(.+)", text)
  if not match:
    return None
  return match.group(1).strip(), match.group(2).strip().rstrip(".")


def pages(man_dir: str = "/usr/share/man"):
  """(page id 'ls.1', section, sections {NAME: [paragraphs]}) of every page, in sorted order."""
  for section in SECTIONS:
    directory = os.path.join(man_dir, f"man{section}")
    if not os.path.isdir(directory):
      continue
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name)
      if os.path.islink(path) or not os.path.isfile(path) or name.startswith(_SKIPPED_PREFIXES):
        continue
      opener = gzip.open if name.endswith(".gz") else open
      try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
          source = f.read()
      except (OSError, EOFError):
        logging.warning("%s: unreadable, skipped", path)
        continue
      if source.lstrip().startswith(".so "):  # a redirect to another page
        continue
      yield name.removesuffix(".gz"), section, parse(source)


def _body(sections: dict) -> list[str]:
  """The document's paragraphs: DESCRIPTION, else the first section after NAME/SYNOPSIS."""
  if sections.get("DESCRIPTION"):
    return sections["DESCRIPTION"]
  for name, paragraphs in sections.items():
    if name not in ("NAME", "SYNOPSIS") and paragraphs:
      return paragraphs
  return []


def _is_test(page_id: str) -> bool:
  return int(hashlib.sha1(page_id.encode()).hexdigest(), 16) % _TEST_SHARE == 0


def collect(man_dir: str = "/usr/share/man"):
  """(corpus {doc_id: (title, text)}, queries, qrels {split: ...}, unlabeled [texts], counts)."""
  candidates, unlabeled, seen, per_section = [], [], set(), {}
  for page_id, section, sections in pages(man_dir):
    name_line = _name_line(sections.get("NAME", []))
    body = "\n\n".join(_body(sections))[:_MAX_BODY_CHARS]
    if not name_line or len(body) < _MIN_BODY_CHARS or body in seen:
      continue  # no description, too short, or the same text as a page already read
    seen.add(body)
    per_section[section] = per_section.get(section, 0) + 1
    names, description = name_line
    candidates.append((page_id, f"{names}({section})", description, body))
    unlabeled.append("\n\n".join(p for name, paragraphs in sections.items() if name != "NAME"
                                 for p in paragraphs))

  counts = {}
  for c in candidates:
    key = pydoc_set._normalized(c[2])
    counts[key] = counts.get(key, 0) + 1
  texts = [pydoc_set._normalized(f"{title} {body}") for _, title, _, body in candidates]
  index = {}
  for i, text in enumerate(texts):
    for shingle in pydoc_set._shingles(text.split()):
      index.setdefault(shingle, set()).add(i)

  def found_verbatim(description: str) -> bool:
    words = pydoc_set._words(description)
    phrase = f" {' '.join(words)} "
    if len(words) < pydoc_set._SHINGLE:
      return any(phrase in f" {text} " for text in texts)
    rarest = min((index.get(s, set()) for s in pydoc_set._shingles(words)), key=len)
    return any(phrase in f" {texts[i]} " for i in rarest)

  corpus, queries, qrels = {}, {}, {"train": {}, "test": {}}
  for page_id, title, description, body in candidates:
    corpus[page_id] = (title, body)
    if (counts[pydoc_set._normalized(description)] == 1
        and len(description.split()) >= _MIN_QUERY_WORDS and not found_verbatim(description)):
      queries[page_id] = description
      qrels["test" if _is_test(page_id) else "train"][page_id] = {page_id: 1}
  return corpus, queries, qrels, unlabeled, per_section


def build(out_dir: str, man_dir: str = "/usr/share/man") -> dict:
  """Writes the BEIR folder, unlabeled.jsonl and manpage_set.json; returns the counts."""
  corpus, queries, qrels, unlabeled, per_section = collect(man_dir)
  if not qrels["test"]:
    raise ValueError(f"{man_dir}: no manual pages with a NAME description found (is the man-db "
                     "/ manpages package installed?)")
  beir.write(out_dir, corpus, queries, qrels)
  with open(os.path.join(out_dir, "unlabeled.jsonl"), "w", encoding="utf-8") as f:
    for text in unlabeled:
      f.write(json.dumps({"text": text}) + "\n")
  info = {"man_dir": man_dir, "num_docs": len(corpus), "pages_per_section": per_section,
          "num_train_queries": len(qrels["train"]), "num_test_queries": len(qrels["test"]),
          "num_unlabeled_pages": len(unlabeled),
          "unlabeled_chars": sum(len(t) for t in unlabeled)}
  with open(os.path.join(out_dir, "manpage_set.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  return info


@functools.lru_cache(maxsize=None)
def cached_dir(man_dir: str = "/usr/share/man") -> str:
  """The set, built on first use into a temporary folder that lives as long as the process."""
  out_dir = tempfile.mkdtemp(prefix="manpage_set_")
  build(out_dir, man_dir)
  return out_dir


def main(argv):
  del argv
  info = build(flags.FLAGS.out, flags.FLAGS.man_dir)
  logging.info("Wrote %s: %s", flags.FLAGS.out, info)
  print(json.dumps(info), flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Folder to write the BEIR set and unlabeled.jsonl into.")
  flags.DEFINE_string("man_dir", "/usr/share/man", "The manual's root (man1 ... man8 inside).")
  flags.mark_flag_as_required("out")
  app.run(main)
