"""decode.py end to end (icefall_cif/decode/loop.py behind both recipes' zipformer_cif/decode.py).

The models are the tiny ones of recipe_fixtures.py (barely trained: these tests are about the
loop, not accuracy; the searches themselves are tested in test_greedy.py / test_beam_search.py).
What is checked:

- the CLI writes icefall's recogs/errs/wer-summary files per test set, whose numbers equal
  kaldialign's on the pairs of the recogs file, logs/writes the RTF, and `--num-plots` PNGs;
- `--epoch/--avg/--iter/--use-averaged-model` pick the weights an independent float64
  computation from the raw checkpoints gives;
- the model is rebuilt from the checkpoint's saved config with no model options; a given model
  option that contradicts it is an error naming both values (and the CLI exits non-zero);
  checkpoints saved without a config decode from the training options saved with them, or from
  the options given;
- bad input (too large --avg, missing checkpoints or test manifest, another vocabulary, a method
  the decoder type lacks) fails with an error naming the option to change;
- `--lm-scale` is the LM fusion weight (0 reproduces plain beam search);
- the transducer's methods run on the checkpoint of the `--world-size 2` run.
"""
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import kaldialign
import pytest
import torch

from icefall_cif.checkpoint import find_checkpoints
from icefall_cif.config import config_fields
from icefall_cif.decode import loop
from icefall_cif.utils import AttributeDict

# Registered before the import so that pytest also rewrites its asserts when it loads it as a plugin.
pytest.register_assert_rewrite("recipe_fixtures")
from recipe_fixtures import (  # noqa: E402
    CE_AR_MODEL,
    LIBRI,
    NUM_UTTS,
    TrainedModel,
    copy_exp_dir,
    decode_in_process,
    run_script,
)

# The shared session fixtures (tiny_corpus, tiny_model, ddp_model, ngram_lm).
pytest_plugins = ["recipe_fixtures"]

TEST_SETS = ("test-clean", "dev-clean")
RECOG_LINE = re.compile(r"^(.*):\t(ref|hyp)=(\[.*\])$")


def decode_options(model: TrainedModel, exp_dir: Path, *extra: str) -> List[str]:
    """decode.py's options: no model options, the checkpoint has the architecture."""
    corpus = model.corpus
    return [
        "--exp-dir", str(exp_dir), "--lang-dir", str(corpus.lang_dir), "--manifest-dir", str(corpus.manifest_dir),
        "--max-duration", "10", "--num-workers", "0", "--num-threads", "1", *extra,
    ]


def selection_params(model: TrainedModel, *args: str) -> AttributeDict:
    from recipe import RECIPE

    return AttributeDict(vars(loop.get_parser(RECIPE).parse_args(decode_options(model, model.exp_dir, *args))))


def read_recogs(path: Path) -> Dict[str, Tuple[List[str], List[str]]]:
    """{cut id: (ref words, hyp words)} parsed from icefall's recogs format."""
    lines = path.read_text().splitlines()
    assert len(lines) % 2 == 0
    out = {}
    for ref_line, hyp_line in zip(lines[::2], lines[1::2]):
        (cut, side, ref), (cut2, side2, hyp) = RECOG_LINE.match(ref_line).groups(), RECOG_LINE.match(hyp_line).groups()
        assert (cut, side, side2) == (cut2, "ref", "hyp")
        out[cut] = (ast.literal_eval(ref), ast.literal_eval(hyp))
    return out


def manifest_texts(model: TrainedModel, part: str) -> Dict[str, List[str]]:
    from lhotse import load_manifest

    cuts = load_manifest(model.corpus.manifest_dir / f"librispeech_cuts_{part}.jsonl.gz")
    return {c.id: c.supervisions[0].text.split() for c in cuts}


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_decode_cli_writes_icefall_result_files(tiny_model: TrainedModel, tmp_path):
    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt", "epoch-2.pt"])
    options = decode_options(tiny_model, exp, "--epoch", "2", "--avg", "1", "--use-averaged-model", "1",
                             "--num-plots", "2")
    proc = run_script("decode.py", options, cwd=tiny_model.corpus.root)
    res = exp / "greedy_search"
    suffix = "epoch-2-avg-1-use-averaged-model"
    log = "".join(p.read_text() for p in res.glob("log-decode-greedy_search-*"))
    assert "Done!" in log and "Traceback" not in proc.stderr

    for test_set in TEST_SETS:
        recogs = read_recogs(res / f"recogs-{test_set}-greedy_search-{suffix}.txt")
        assert {cut: ref for cut, (ref, _) in recogs.items()} == manifest_texts(tiny_model, test_set)
        assert len(recogs) == NUM_UTTS["test" if test_set.startswith("test") else "dev"]

        # The numbers of the result files, against kaldialign on the very pairs of the recogs file.
        counts = {"ins": 0, "del": 0, "sub": 0}
        ref_words = 0
        for ref, hyp in recogs.values():
            ref_words += len(ref)
            for r, h in kaldialign.align(ref, hyp, "<eps>"):
                counts["ins" if r == "<eps>" else "del" if h == "<eps>" else "sub"] += r != h
        errors = sum(counts.values())
        rate = float("%.2f" % (100.0 * errors / ref_words))
        assert errors == sum(kaldialign.edit_distance(r, h)["total"] for r, h in recogs.values())
        errs = (res / f"errs-{test_set}-greedy_search-{suffix}.txt").read_text()
        assert errs.startswith(f"%WER = {rate:.2f}\n")
        assert (f"%WER {rate:.2f}% [ {errors} / {ref_words}, {counts['ins']} ins, {counts['del']} del, "
                f"{counts['sub']} sub ]") in errs
        summary = (res / f"wer-summary-{test_set}-{suffix}.txt").read_text()
        assert summary == f"settings\tWER\ngreedy_search\t{rate}\n"

        rtf_line = re.search(rf"{test_set}: WER {rate:.2f}% over \d+ utterances, RTF ([0-9.]+) \(", log)
        assert rtf_line and 0 < float(rtf_line.group(1)) < 10
        assert (res / f"rtf-{test_set}-greedy_search-{suffix}.txt").read_text().startswith(f"{test_set}: WER")
        # The fire-count histogram covers every utterance once.
        fires = (res / f"fires-{test_set}-{suffix}.txt").read_text().splitlines()
        assert fires[0].startswith(f"CIF fires - reference tokens over {len(recogs)} utterances")
        assert sum(int(line.split("\t")[1]) for line in fires[2:]) == len(recogs)

        plots = sorted((res / f"cif-plots-{test_set}").glob("*.png"))
        assert len(plots) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
        assert {p.stem for p in plots} <= set(recogs)


def test_model_selection_matches_independent_averages(tiny_model: TrainedModel):
    exp = tiny_model.exp_dir
    models = {e: load(exp / f"epoch-{e}.pt") for e in (1, 2)}

    def running_average_mean(start: dict, end: dict) -> Dict[str, torch.Tensor]:
        """Mean of the models after batches s+1..e (average period 1) from the running averages."""
        s, e = start["batch_idx_train"], end["batch_idx_train"]
        return {k: (end["model_avg"][k] * e - start["model_avg"][k] * s) / (e - s) for k in end["model_avg"]}

    def check(args: Tuple[str, ...], expected: Dict[str, torch.Tensor], suffix: str) -> None:
        state, got_suffix, trained = loop.select_model_weights(selection_params(tiny_model, *args))
        assert got_suffix == suffix and trained["vocab_size"] == 64
        assert state.keys() == expected.keys()
        for k, v in expected.items():
            if v.is_floating_point():
                torch.testing.assert_close(state[k], v.to(state[k].dtype), rtol=1e-6, atol=1e-7, msg=k)
            else:
                assert torch.equal(state[k], v), k

    mean_1_2 = {k: (models[1]["model"][k].double() + models[2]["model"][k].double()) / 2 for k in models[2]["model"]}
    check(("--epoch", "2", "--avg", "2", "--use-averaged-model", "0"), mean_1_2, "epoch-2-avg-2")
    check(("--epoch", "2", "--avg", "1", "--use-averaged-model", "1"), running_average_mean(models[1], models[2]),
          "epoch-2-avg-1-use-averaged-model")
    check(("--epoch", "1", "--avg", "1", "--use-averaged-model", "0"), models[1]["model"], "epoch-1-avg-1")

    newest, older = [Path(p) for p in find_checkpoints(exp)]  # --keep-last-k 2
    n = int(newest.stem.split("-")[1])
    batch_ckpts = {p: load(p) for p in (newest, older)}
    check(("--iter", str(n), "--avg", "1", "--use-averaged-model", "0"), batch_ckpts[newest]["model"],
          f"iter-{n}-avg-1")
    check(("--iter", str(n), "--avg", "1", "--use-averaged-model", "1"),
          running_average_mean(batch_ckpts[older], batch_ckpts[newest]), f"iter-{n}-avg-1-use-averaged-model")


@pytest.mark.parametrize(
    "args, error, message",
    [
        (("--epoch", "2", "--avg", "2", "--use-averaged-model", "1"), ValueError,
         r"needs epoch-0\.pt.*available epochs: \[1, 2\]\. Use --avg 1 or less \(or --use-averaged-model 0\)"),
        (("--epoch", "2", "--avg", "3", "--use-averaged-model", "0"), ValueError,
         r"available epochs: \[1, 2\]\. Use --avg 2 or less$"),
        (("--epoch", "1", "--avg", "1", "--use-averaged-model", "1"), ValueError,
         r"Use --use-averaged-model 0 \(no earlier checkpoint"),
        (("--epoch", "5", "--avg", "1"), FileNotFoundError,
         r"epoch-5\.pt does not exist; the epochs in .* are \[1, 2\]"),
        (("--iter", "3", "--avg", "1"), FileNotFoundError,
         r"checkpoint-3\.pt does not exist; the batch checkpoints there are \['checkpoint-{newest}\.pt', "
         r"'checkpoint-{older}\.pt'\]"),
        (("--iter", "{newest}", "--avg", "2", "--use-averaged-model", "1"), ValueError,
         r"needs 3 checkpoint-\*\.pt files .* found 2 .*Use --avg 1 or less"),
        (("--avg", "0"), ValueError, "--avg must be >= 1"),
    ],
)
def test_impossible_model_selection_says_what_to_change(tiny_model: TrainedModel, args, error, message):
    # tiny_model keeps two batch checkpoints (--keep-last-k 2), two batches apart (--save-every-n 2).
    newest, older = [int(Path(p).stem.split("-")[1]) for p in find_checkpoints(tiny_model.exp_dir)]
    assert newest == older + 2 > 3
    args = [a.format(newest=newest) for a in args]
    with pytest.raises(error, match=message.format(newest=newest, older=older)):
        loop.select_checkpoints(selection_params(tiny_model, *args))


def test_bad_decoding_input_is_a_clear_error(tiny_model: TrainedModel, tmp_path):
    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt", "epoch-2.pt"])
    corpus = tiny_model.corpus
    base = decode_options(tiny_model, exp, "--epoch", "2", "--avg", "1")

    with pytest.raises(ValueError, match=r"trained with 64 tokens but .*lang_bpe_40 has 40: pass the --lang-dir"):
        decode_in_process(base + ["--lang-dir", str(corpus.other_lang_dir)], corpus)
    with pytest.raises(ValueError, match=r"modified_beam_search does not apply to the decoder type 'cif_ce_ar' of the "
                                         r"model in .*; use one of \['greedy_search', 'beam_search'"):
        decode_in_process(base + ["--decoding-method", "modified_beam_search"], corpus)
    with pytest.raises(ValueError, match=r"beam_search_lm_shallow_fusion needs an LM: pass --lm-type"):
        decode_in_process(base + ["--decoding-method", "beam_search_lm_shallow_fusion"], corpus)

    no_test = tmp_path / "fbank"
    no_test.mkdir()
    for part in ("train-clean-100", "dev-clean"):
        shutil.copy(corpus.manifest_dir / f"librispeech_cuts_{part}.jsonl.gz", no_test)
    with pytest.raises(FileNotFoundError, match=r"librispeech_cuts_test-clean\.jsonl\.gz \(test set 'test-clean'\) "
                                                r"not found\. Create it with prepare\.sh"):
        decode_in_process(base + ["--manifest-dir", str(no_test)], corpus)
    assert not list(exp.glob("*/recogs-*"))  # nothing was decoded


def test_decode_rebuilds_the_model_from_the_checkpoint(tiny_model: TrainedModel, tmp_path):
    corpus = tiny_model.corpus
    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt", "epoch-2.pt"])
    base = decode_options(tiny_model, exp, "--epoch", "2", "--avg", "1", "--use-averaged-model", "0")
    rates = decode_in_process(base, corpus)
    suffix = "greedy_search-epoch-2-avg-1"
    recogs = {t: read_recogs(exp / "greedy_search" / f"recogs-{t}-{suffix}.txt") for t in TEST_SETS}

    # The options it was trained with are accepted; one that contradicts the checkpoint is not.
    assert decode_in_process(base + tiny_model.model_options, corpus) == rates
    with pytest.raises(ValueError, match=r"contradict the checkpoint: --encoder-dim is 64,64 here but the model in "
                                         r".* was trained with 48,48; --decoder-type is cif_ce_nar here .* cif_ce_ar"):
        decode_in_process(base + ["--encoder-dim", "64,64", "--decoder-type", "cif_ce_nar"], corpus)
    proc = subprocess.run(
        [sys.executable, str(LIBRI / "zipformer_cif" / "decode.py"), *base, "--ce-decoder-dim", "64"],
        cwd=corpus.root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "decode.py: error: Model options that contradict the checkpoint: --ce-decoder-dim is 64 here" in proc.stderr
    # An inference-only option may differ from training.
    decode_in_process(base + ["--tail-threshold", "0.3"], corpus)

    # A checkpoint from before the config was saved: rebuilt from the training options next to
    # the weights; with those gone too, from the options given, else a clear error.
    from recipe import RECIPE

    saved = load(exp / "epoch-2.pt")
    del saved["model_config"], saved["token_table"]
    for name, strip_options in (("old", False), ("bare", True)):
        old = tmp_path / name
        old.mkdir()
        if strip_options:
            saved = {k: v for k, v in saved.items() if k not in config_fields(RECIPE.model_config)}
        torch.save(saved, old / "epoch-2.pt")
        old_base = decode_options(tiny_model, old, "--epoch", "2", "--avg", "1", "--use-averaged-model", "0")
        if strip_options:
            with pytest.raises(ValueError, match=r"saved without their model config or training options: pass the "
                                                 r"model options"):
                decode_in_process(old_base, corpus)
            old_base += tiny_model.model_options
        assert decode_in_process(old_base, corpus) == rates
        for t in TEST_SETS:
            assert read_recogs(old / "greedy_search" / f"recogs-{t}-{suffix}.txt") == recogs[t]


def test_lm_scale_is_the_fusion_weight(tiny_model: TrainedModel, ngram_lm: Path, tmp_path):
    from recipe import RECIPE

    parser = loop.get_parser(RECIPE)
    assert [a.dest for a in parser._actions if "--lm-scale" in a.option_strings] == ["lm_scale"]
    assert parser.parse_args(["--lm-scale", "0.7"]).lm_scale == 0.7

    exp = copy_exp_dir(tiny_model, tmp_path / "exp", ["epoch-1.pt", "epoch-2.pt"])
    corpus = tiny_model.corpus
    base = decode_options(tiny_model, exp, "--epoch", "2", "--avg", "1", "--beam-size", "3")
    fusion = ["--decoding-method", "beam_search_lm_shallow_fusion", "--lm-type", "ngram", "--lm-path", str(ngram_lm)]
    decode_in_process(base + ["--decoding-method", "beam_search"], corpus)
    decode_in_process(base + fusion + ["--lm-scale", "0"], corpus)
    decode_in_process(base + fusion + ["--lm-scale", "2.0"], corpus)
    suffix = "epoch-2-avg-1-use-averaged-model"
    for test_set in TEST_SETS:
        plain = read_recogs(exp / "beam_search" / f"recogs-{test_set}-beam_size_3-{suffix}.txt")
        fused = exp / "beam_search_lm_shallow_fusion"
        assert read_recogs(fused / f"recogs-{test_set}-beam_size_3_lm_scale_0.0-{suffix}.txt") == plain
        assert (fused / f"recogs-{test_set}-beam_size_3_lm_scale_2.0-{suffix}.txt").is_file()


def test_transducer_methods_on_the_ddp_checkpoint(ddp_model: TrainedModel, tmp_path):
    exp = copy_exp_dir(ddp_model, tmp_path / "exp", ["epoch-1.pt"])
    corpus = ddp_model.corpus
    base = decode_options(ddp_model, exp, "--epoch", "1", "--avg", "1", "--use-averaged-model", "0")
    for method in (["greedy_search", "--max-sym-per-frame", "2"], ["modified_beam_search", "--beam-size", "2"],
                   ["ctc_prefix_beam_search", "--beam-size", "2"]):
        rates = decode_in_process(base + ["--decoding-method", *method], corpus)
        assert set(rates) == set(TEST_SETS) and all(r >= 0 for r in rates.values())
        key = method[0] if method[0] == "greedy_search" else "beam_size_2"
        for test_set in TEST_SETS:
            recogs = read_recogs(exp / method[0] / f"recogs-{test_set}-{key}-epoch-1-avg-1.txt")
            assert {c: r for c, (r, _) in recogs.items()} == manifest_texts(ddp_model, test_set)


def test_aishell_decode_parser_scores_characters():
    path = LIBRI.parents[1] / "aishell" / "ASR" / "zipformer_cif" / "recipe.py"
    spec = importlib.util.spec_from_file_location("aishell_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recipe = module.RECIPE
    assert (recipe.name, recipe.default_lang_dir, recipe.test_sets) == ("aishell", "data/lang_char", ("test", "dev"))
    args = loop.get_parser(recipe).parse_args(CE_AR_MODEL + ["--lm-scale", "0.2"])
    assert (args.corpus, str(args.lang_dir), args.lm_scale) == ("aishell", "data/lang_char", 0.2)
