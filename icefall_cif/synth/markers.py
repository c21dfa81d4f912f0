"""The marker file that says which synthetic corpus a directory holds, and whether it is complete.

It makes reruns free (the same corpus is not synthesized twice) and keeps the synthesizer from
writing over a real corpus or a different synthetic one.
"""
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, Optional

from icefall_cif.synth.config import SynthSummary

logger = logging.getLogger(__name__)

MARKER_NAME = ".icefall_cif_synth.json"
MARKER_VERSION = 1


def read_marker(corpus_dir: Path) -> Optional[Dict]:
    """The marker of `corpus_dir`, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((corpus_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_marker(corpus_dir: Path, content: Dict) -> None:
    """Replace the marker of `corpus_dir` by `content` in one step (never half-written)."""
    tmp = corpus_dir / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(corpus_dir / MARKER_NAME)


def claim_corpus_dir(corpus_dir: Path, wanted: Dict, force: bool) -> Optional[SynthSummary]:
    """Make `corpus_dir` ours to write. Returns the stored summary when it already holds
    exactly the corpus `wanted` describes, so reruns are free.

    An unfinished run of the same corpus, or anything with `force`, is deleted.

    Raises:
      FileExistsError, saying what the directory holds, when it holds something else.
    """
    if not corpus_dir.exists() or not any(corpus_dir.iterdir()):
        return None
    marker = read_marker(corpus_dir)
    same = marker is not None and all(marker.get(k) == v for k, v in wanted.items())
    if same and marker.get("complete") and not force:
        logger.info(f"{corpus_dir} already holds this synthetic corpus; nothing to do")
        return SynthSummary.from_json(marker["summary"])
    if same or force:
        reason = "--force" if force else "an unfinished run of the same corpus"
        logger.warning(f"Removing {corpus_dir} ({reason}) to synthesize it anew")
        shutil.rmtree(corpus_dir)
        return None
    if marker is None:
        what = "files that icefall_cif.synth did not write (a real corpus?)"
    else:
        changed = sorted(
            k for k in wanted["config"] if marker.get("config", {}).get(k) != wanted["config"][k]
        )
        what = f"a synthetic corpus made with other options (differing: {', '.join(changed)})"
    raise FileExistsError(
        f"{corpus_dir} already holds {what}. Pass --force (force=True) to delete it and "
        "synthesize anew, or choose another output directory."
    )
