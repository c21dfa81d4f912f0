"""The corpus registry: one module per corpus, everything specific to a corpus in its module.

The data stages (`icefall_cif.data_prep`), the synthesizer (`icefall_cif.synth`) and the
recipes look a corpus up by name here and never branch on it. A new corpus is a module that
subclasses :class:`Corpus` (and :class:`SynthLayout` for its synthetic copy), registered below
or by the caller with :func:`register_corpus`.
"""
from typing import Dict, Type, TypeVar

from icefall_cif.corpora.aishell import Aishell
from icefall_cif.corpora.base import ROLES, Corpus, DataPrepError
from icefall_cif.corpora.layout import SynthLayout
from icefall_cif.corpora.librispeech import LibriSpeech

__all__ = ["CORPORA", "Corpus", "DataPrepError", "SynthLayout", "get_corpus", "register_corpus"]

# name -> corpus, in registration order (the order --help lists them in).
CORPORA: Dict[str, Corpus] = {}

C = TypeVar("C", bound=Type[Corpus])


def register_corpus(cls: C) -> C:
    """Register an instance of the :class:`Corpus` subclass `cls` under `cls.name`; returns
    `cls`, so it also serves as a class decorator.

    Raises:
      TypeError when `cls` leaves a method of :class:`Corpus` unimplemented.
      ValueError when the name is taken, or `splits`, `test_sets` or `synth_layout` do not
      fit the interface (the message names the class and the attribute).
    """
    where = f"{cls.__module__}.{cls.__qualname__}"
    corpus = cls()
    missing = [a for a in Corpus.__annotations__ if not hasattr(corpus, a)]
    if missing:
        raise ValueError(f"{where} does not set {', '.join(missing)} (see icefall_cif.corpora.base.Corpus)")
    if corpus.name in CORPORA:
        taken = type(CORPORA[corpus.name])
        raise ValueError(f"{where}: a corpus named {corpus.name!r} is already registered ({taken.__module__})")
    if set(corpus.splits) != set(ROLES):
        raise ValueError(f"{where}.splits must map exactly the roles {ROLES} to part names, got {dict(corpus.splits)}")
    unknown = [p for p in corpus.test_sets if p not in corpus.parts]
    if unknown:
        raise ValueError(f"{where}.test_sets names {unknown}, which are not among its parts {corpus.parts}")
    if not (isinstance(corpus.synth_layout, type) and issubclass(corpus.synth_layout, SynthLayout)):
        raise ValueError(f"{where}.synth_layout must be a subclass of icefall_cif.corpora.SynthLayout")
    CORPORA[corpus.name] = corpus
    return cls


def get_corpus(name: str) -> Corpus:
    """The registered corpus called `name`.

    Raises:
      DataPrepError naming the known corpora when there is none by that name.
    """
    if name not in CORPORA:
        raise DataPrepError(f"Unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    return CORPORA[name]


register_corpus(LibriSpeech)
register_corpus(Aishell)
