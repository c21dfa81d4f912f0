"""The decoding loop shared by every recipe's `zipformer_cif/decode.py`.

Model selection follows icefall (`--epoch/--avg/--iter/--use-averaged-model`); results go to
`<exp-dir>/<decoding-method>/{recogs,errs,wer-summary}-<test-set>-...txt`; the real-time factor of
each test set (decoding wall time / audio duration, data loading excluded) is logged and written
to `rtf-<test-set>-...txt` next to them.

The model is rebuilt from the architecture saved in the checkpoint (`model_config`), so decoding
needs no model options. A model option given anyway must agree with the checkpoint (options
marked as inference-only, such as `--tail-threshold`, may change it). Checkpoints from before the
config was saved are rebuilt from the training options saved next to the weights, and files that
have neither from the model options given here (defaults otherwise).
"""
import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from icefall_cif.checkpoint import (
    average_checkpoints,
    average_checkpoints_with_averaged_model,
    find_checkpoints,
    load_safely,
    strip_ddp_prefix,
)
from icefall_cif.config import add_config_arguments, config_fields, config_from_dict, config_from_options, option_name
from icefall_cif.datamodule import AsrDataModule
from icefall_cif.decode.search import decode_batch, search_options
from icefall_cif.model_contract import DecoderHead, check_model, decoding_methods
from icefall_cif.recipe import Recipe
from icefall_cif.scoring import save_results, write_fire_counts
from icefall_cif.tokenizer import Tokenizer, check_token_table
from icefall_cif.utils import AttributeDict, set_num_threads, setup_logger, str2bool


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    """All options of a recipe's decode.py: decoding, data, and the (optional) model options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decoding_arguments(parser, recipe.default_lang_dir)
    AsrDataModule.add_arguments(parser)
    add_config_arguments(
        parser, recipe.model_config, "Model (optional: read from the checkpoint; if given, must agree with it)",
        defaults_unset=True,
    )
    parser.set_defaults(corpus=recipe.name)
    return parser


def add_model_selection_arguments(g) -> None:
    """icefall's `--exp-dir --epoch/--iter --avg --use-averaged-model` (decode.py, export.py)."""
    g.add_argument("--epoch", type=int, default=30, help="Use epoch-<epoch>.pt (and the ones before it).")
    g.add_argument("--iter", type=int, default=0, help="If > 0, use checkpoint-<iter>.pt instead of epochs.")
    g.add_argument("--avg", type=int, default=9, help="Number of checkpoints to average.")
    g.add_argument("--use-averaged-model", type=str2bool, default=True,
                   help="Average with the running averaged models stored in the checkpoints (icefall's scheme).")
    g.add_argument("--exp-dir", type=Path, default=Path("zipformer_cif/exp"))


def add_search_arguments(g) -> None:
    """The options of the searches that need no LM (decode.py, pretrained.py)."""
    g.add_argument("--beam-size", type=int, default=4)
    g.add_argument("--max-sym-per-frame", type=int, default=3,
                   help="cif_transducer greedy and beam searches: most symbols per CIF vector. icefall's 1 suits "
                        "25 Hz frames; a CIF vector carries about one token and, where the CIF layer fired too few "
                        "times, has to carry two, which 1 would drop (see greedy_search, modified_beam_search).")
    g.add_argument("--num-paths", type=int, default=4,
                   help="Size of the n-best list for rescoring (LM rescoring, joint_beam_search, cif_rescoring).")
    g.add_argument("--ctc-weight", type=float, default=0.5,
                   help="joint_beam_search, cif_rescoring and the mask-predict beams (mask_ctc_beam_search, "
                        "nar_beam_search): weight of the CTC head's log-likelihood next to the decoder's score "
                        "(0 = the decoder alone).")
    g.add_argument("--mask-threshold", type=float, default=None,
                   help="Mask-predict searches (mask_ctc_* and mask_ctc's greedy_search, nar_mask_predict, "
                        "nar_beam_search): tokens of the first guess whose confidence is below this are "
                        "re-predicted; in [0, 1], 0 = none. Default: the head's (mask_ctc 0.3, cif_ce_nar 0.9, "
                        "chosen on the demo's dev-clean; ESPnet's Mask-CTC uses 0.999).")
    g.add_argument("--mask-iterations", type=int, default=None,
                   help="Mask-predict searches: the most rounds of re-prediction; M re-predicted tokens are filled "
                        "ceil(M / min(this, M)) per round, the most confident first. Default: the head's "
                        "(mask_ctc 10, cif_ce_nar 1).")


def add_decoding_arguments(parser: argparse.ArgumentParser, default_lang_dir: str) -> None:
    g = parser.add_argument_group("Decoding", "icefall-compatible decoding options")
    add_model_selection_arguments(g)
    g.add_argument("--lang-dir", type=Path, default=Path(default_lang_dir))
    g.add_argument("--decoding-method", type=str, default="greedy_search",
                   help="Which search: greedy_search, the CTC head's ctc_greedy_search and ctc_prefix_beam_search, "
                        "the decoder head's beam searches (modified_beam_search[_lm_shallow_fusion] for "
                        "cif_transducer, beam_search[_lm_shallow_fusion] for the CE heads), the mask-predict "
                        "searches (mask_ctc_greedy and mask_ctc_beam_search for mask_ctc, nar_mask_predict and "
                        "nar_beam_search for cif_ce_nar), and the joint CIF + CTC joint_beam_search (heads with a "
                        "beam search) and cif_rescoring (cif_transducer; the CE heads with --cif-segmentation ctc).")
    add_search_arguments(g)
    g.add_argument("--lm-type", type=str, default=None, choices=["ngram", "rnn"],
                   help="LM for shallow fusion / n-best rescoring (trained by local/train_lm.py).")
    g.add_argument("--lm-path", type=Path, default=None, help="The LM file (ARPA for ngram, .pt for rnn).")
    g.add_argument("--lm-scale", type=float, default=0.3,
                   help="LM weight of *_lm_shallow_fusion (and of n-best rescoring).")
    g.add_argument("--nbest-scale", type=float, default=0.0,
                   help="If > 0, rescore the beam's n-best with the LM weighted by this scale.")
    g.add_argument("--max-utterance-duration", type=float, default=120.0,
                   help="Refuse test cuts longer than this (s): self-attention memory grows with the square of "
                        "the length (a 10-minute cut needs tens of GB); split long recordings first.")
    g.add_argument("--num-plots", type=int, default=0,
                   help="Write a PNG of the CIF weights, fires and tokens for this many utterances per test set.")
    g.add_argument("--num-threads", type=int, default=1,
                   help="PyTorch intra-op threads (icefall uses 1); 0 = all CPU cores of this machine.")


def _epoch_file(exp_dir: Path, epoch: int) -> Path:
    return exp_dir / f"epoch-{epoch}.pt"


def _available_epochs(exp_dir: Path) -> List[int]:
    stems = (p.stem.split("-", 1)[1] for p in exp_dir.glob("epoch-*.pt"))
    return sorted(int(s) for s in stems if s.isdigit())


def _averaged_flag(params: AttributeDict) -> str:
    return " --use-averaged-model 1" if params.use_averaged_model else " --use-averaged-model 0"


def _shorter_average_advice(longest: int, use_averaged_model: bool) -> str:
    if longest >= 1:
        return f"Use --avg {longest} or less" + (" (or --use-averaged-model 0)" if use_averaged_model else "")
    return "Use --use-averaged-model 0 (no earlier checkpoint to start the running average from)"


def select_checkpoints(params: AttributeDict) -> Tuple[List[Path], str]:
    """The checkpoint files named by --epoch/--iter/--avg/--use-averaged-model.

    Returns:
      The files, newest first (with --use-averaged-model: [end, start], the start excluded from
      the average), and the result-file suffix such as `epoch-30-avg-9-use-averaged-model`.
    """
    exp_dir, avg = params.exp_dir, params.avg
    if avg < 1:
        raise ValueError(f"--avg must be >= 1, got {avg}")
    need = avg + 1 if params.use_averaged_model else avg
    if params.iter > 0:
        suffix = f"iter-{params.iter}-avg-{avg}"
        found = [Path(f) for f in find_checkpoints(exp_dir, iteration=-params.iter)]
        available = [p.name for p in map(Path, find_checkpoints(exp_dir))]
        if not found or found[0].name != f"checkpoint-{params.iter}.pt":
            raise FileNotFoundError(
                f"{exp_dir}/checkpoint-{params.iter}.pt does not exist; the batch checkpoints there are "
                f"{available or 'none'} (train.py keeps the newest --keep-last-k): choose one of them with --iter"
            )
        if len(found) < need:
            longest = len(found) - 1 if params.use_averaged_model else len(found)
            raise ValueError(
                f"--iter {params.iter} --avg {avg}{_averaged_flag(params)} needs {need} checkpoint-*.pt files at or "
                f"before batch {params.iter} in {exp_dir}, found {len(found)} ({[p.name for p in found]}): "
                + _shorter_average_advice(longest, params.use_averaged_model)
            )
        files = [found[0], found[avg]] if params.use_averaged_model else found[:avg]
    else:
        epoch = params.epoch
        suffix = f"epoch-{epoch}-avg-{avg}"
        available = _available_epochs(exp_dir)
        if not _epoch_file(exp_dir, epoch).is_file():
            raise FileNotFoundError(
                f"{_epoch_file(exp_dir, epoch)} does not exist; the epochs in {exp_dir} are {available or 'none'}: "
                f"choose one with --epoch (or check --exp-dir)"
            )
        first = epoch - avg + 1  # first epoch inside the average
        if first - (1 if params.use_averaged_model else 0) < 1:
            longest = epoch - 1 if params.use_averaged_model else epoch
            raise ValueError(
                f"--epoch {epoch} --avg {avg}{_averaged_flag(params)} averages more epochs than exist up to "
                f"epoch {epoch}"
                + (f" (with the running averages it also needs epoch-{first - 1}.pt, where the average starts)"
                   if params.use_averaged_model else "")
                + f"; available epochs: {available}. "
                + _shorter_average_advice(longest, params.use_averaged_model)
            )
        if params.use_averaged_model:
            names = [epoch, first - 1]
        else:
            names = list(range(epoch, first - 1, -1))
        missing = [e for e in names if not _epoch_file(exp_dir, e).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Missing checkpoints for epochs {missing} in {exp_dir} (available: {available}): lower --avg"
            )
        files = [_epoch_file(exp_dir, e) for e in names]
    if params.use_averaged_model:
        suffix += "-use-averaged-model"
    return files, suffix


def select_model_weights(params: AttributeDict) -> Tuple[Dict[str, torch.Tensor], str, Dict[str, Any]]:
    """The (averaged) weights named by --epoch/--iter/--avg/--use-averaged-model.

    Returns:
      The state dict; the result-file suffix (see :func:`select_checkpoints`); the training
      options saved in the newest of those checkpoints (everything but tensors and states).
    """
    files, suffix = select_checkpoints(params)
    cpu = torch.device("cpu")
    logging.info(f"Averaging {[f.name for f in files]}" + (" (running averages)" if params.use_averaged_model else ""))
    if params.use_averaged_model:
        state = average_checkpoints_with_averaged_model(files[1], files[0], cpu)
    elif len(files) == 1:
        state = strip_ddp_prefix(load_safely(files[0])["model"])
    else:
        state = average_checkpoints(files, cpu)
    return state, suffix, read_training_options(files[0])


def read_training_options(filename: Path) -> Dict[str, Any]:
    """The options and counters train.py saved at the top level of a checkpoint."""
    saved = load_safely(filename, mmap=True)
    skip = {"model", "model_avg", "optimizer", "scheduler", "grad_scaler", "sampler", "rng_state"}
    return {k: v for k, v in saved.items() if k not in skip}


def model_config_for_decoding(recipe: Recipe, params: AttributeDict, trained: Dict[str, Any], tokenizer: Tokenizer):
    """The architecture to rebuild: the checkpoint's, with the model options given here checked.

    Args:
      params: the decoding options; model options not given are None.
      trained: the top-level entries of the newest selected checkpoint.
    Returns:
      An instance of `recipe.model_config`.
    Raises:
      ValueError naming each given option that contradicts the checkpoint, with both values.
    """
    cls = recipe.model_config
    fields = config_fields(cls)
    given = {name: params[name] for name in fields if params.get(name) is not None}
    if "model_config" in trained:
        config = config_from_dict(cls, trained["model_config"], f"The checkpoint in {params.exp_dir}")
    else:
        # Checkpoints from before the config was saved hold train.py's options at the top level.
        options = {name: trained[name] for name in fields if name in trained}
        if not options:
            logging.info(f"{params.exp_dir}: the checkpoint holds no model config or training options; building "
                         f"the model from the options given here: {given}")
            options = given
        config = dataclasses.replace(
            config_from_options(cls, options), vocab_size=tokenizer.vocab_size, blank_id=tokenizer.blank_id
        )
    conflicts, overrides = [], {}
    for name, value in given.items():
        saved = getattr(config, name)
        if value == saved:
            continue
        if fields[name].metadata.get("inference"):
            overrides[name] = value
        else:
            conflicts.append(f"{option_name(name)} is {value} here but the model in {params.exp_dir} was trained "
                             f"with {saved}")
    if conflicts:
        raise ValueError(
            "Model options that contradict the checkpoint: " + "; ".join(conflicts)
            + ". decode.py reads the architecture from the checkpoint: drop these options."
        )
    if overrides:
        logging.info(f"Inference options that differ from training: {overrides}")
    return dataclasses.replace(config, **overrides)


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], params: AttributeDict) -> None:
    """Load weights, turning a key/shape mismatch into advice about the options to change."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"The checkpoints in {params.exp_dir} do not fit the model built from the options given here. "
            f"They were saved without their model config or training options: pass the model options (--encoder-config, "
            f"--decoder-type, ...) train.py used; see the 'Options' line of {params.exp_dir}/log/log-train-*. "
            f"Details: {str(e)[:300]}"
        ) from None


def results_key(params: AttributeDict, head: DecoderHead) -> str:
    """Name of a decoding setting inside the result files, as icefall spells it; a mask-predict
    method (one of the head's `mask_predict_methods`, or the one its greedy_search stands for)
    adds its threshold and iterations (the head's defaults where `params` has None)."""
    method = params.decoding_method
    if method == "greedy_search" and head.greedy_mask_predict_method is not None:
        method = head.greedy_mask_predict_method
    if method in head.mask_predict_methods:
        opts = search_options(params, head)
        mask = f"mask_threshold_{opts.mask_threshold}_iterations_{opts.mask_iterations}"
        if "beam_search" not in method:
            return f"{method}_{mask}"
        return f"beam_size_{params.beam_size}_{mask}_ctc_weight_{params.ctc_weight}" + (
            f"_lm_scale_{params.lm_scale}" if params.nbest_scale > 0 else ""
        )
    if method == "cif_rescoring":
        return f"cif_rescoring_beam_size_{params.beam_size}_ctc_weight_{params.ctc_weight}"
    if "beam_search" in method:
        key = f"beam_size_{params.beam_size}"
        if method == "joint_beam_search":
            key += f"_ctc_weight_{params.ctc_weight}"
        elif "lm" in method or params.nbest_scale > 0:
            key += f"_lm_scale_{params.lm_scale}"
        return key
    return method


@torch.no_grad()
def decode_dataset(
    dl: torch.utils.data.DataLoader,
    params: AttributeDict,
    model: nn.Module,
    tokenizer: Tokenizer,
    device: torch.device,
    lm: Optional[Any] = None,
    plot_dir: Optional[Path] = None,
) -> Tuple[List[Tuple[str, List[str], List[str]]], float, float, List[int]]:
    """Decode every batch of `dl` (batches of `inputs` (N, T, 80) and `supervisions` with cuts).

    Returns:
      (cut_id, ref units, hyp units) per utterance; the decoding wall time (s, encoder + search);
      the audio duration (s); per utterance, CIF fires at inference minus reference tokens.
    """
    results, fire_differences = [], []
    seen = set()
    decode_seconds = audio_seconds = 0.0
    plots_left = params.num_plots if plot_dir is not None else 0
    for batch in tqdm(dl, desc="decoding", unit="batch", leave=False):
        feature = batch["inputs"].to(device)
        sup = batch["supervisions"]
        feature_lens = sup["num_frames"].to(device)
        check_decoding_batch(batch, seen, params.get("max_utterance_duration", float("inf")))
        t0 = time.perf_counter()
        encoder_out, encoder_out_lens = model.forward_encoder(feature, feature_lens)
        hyps = decode_batch(params.decoding_method, model, encoder_out, encoder_out_lens, params, lm=lm)
        decode_seconds += time.perf_counter() - t0
        audio_seconds += float(sup["num_frames"].sum()) / 100.0
        fires = model.forward_cif(encoder_out, encoder_out_lens).cif_lens.tolist()
        fire_differences += [n - len(t) for n, t in zip(fires, tokenizer.encode(sup["text"]))]
        cut_ids = [c.id for c in sup["cut"]]
        for cut_id, ref_text, hyp_ids in zip(cut_ids, sup["text"], hyps):
            results.append((cut_id, tokenizer.text_units(ref_text), tokenizer.text_units(tokenizer.decode(hyp_ids))))
        if plots_left > 0:
            from icefall_cif.plot import plot_cif_batch

            written = plot_cif_batch(model, tokenizer, encoder_out, encoder_out_lens, cut_ids, plot_dir, plots_left)
            plots_left -= len(written)
    return results, decode_seconds, audio_seconds, fire_differences


def check_decoding_batch(batch: Dict[str, Any], seen: set, max_duration: float = float("inf")) -> None:
    """Refuse what would silently corrupt the scores (non-finite features, a cut id seen twice)
    or exhaust memory (a cut longer than `max_duration` seconds).

    Args:
      batch: `inputs` (N, T, F) and `supervisions` with `cut`; seen: the ids decoded so far (updated).
    """
    cuts = batch["supervisions"]["cut"]
    too_long = [c for c in cuts if c.duration > max_duration]
    if too_long:
        raise ValueError(
            f"Cut {too_long[0].id} is {too_long[0].duration:.0f} s long, more than --max-utterance-duration "
            f"{max_duration:g}: self-attention over it needs memory growing with the square of its length. Split "
            f"long recordings into segments first (e.g. lhotse's CutSet.cut_into_windows or "
            f"trim_to_supervisions), or raise --max-utterance-duration if the machine has the memory"
        )
    finite = torch.isfinite(batch["inputs"]).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = [c for c, ok in zip(cuts, finite.tolist()) if not ok]
        where = sorted({str(c.features.storage_path) for c in bad if c.has_features})
        raise ValueError(
            f"Cuts {[c.id for c in bad]} have NaN/inf feature values (feature storage {where}); re-create the "
            f"features with prepare.sh stage 2 (remove data/fbank/.<corpus>.done first)"
        )
    for cut in cuts:
        if cut.id in seen:
            raise ValueError(
                f"Cut id {cut.id!r} appears twice in the test set: its results would be scored twice. Remove the "
                f"duplicate from the manifest (e.g. lhotse's CutSet.from_cuts refuses duplicates)"
            )
        seen.add(cut.id)


def load_lm(params: AttributeDict, device: torch.device):
    """The LM of --lm-type/--lm-path, or None when the method needs none."""
    needs_lm = params.decoding_method.endswith("_lm_shallow_fusion") or params.nbest_scale > 0
    if not needs_lm:
        if params.lm_type is not None:
            logging.warning(f"--lm-type {params.lm_type} is ignored: {params.decoding_method} with --nbest-scale "
                            f"{params.nbest_scale} uses no LM")
        return None
    if params.lm_type is None:
        raise ValueError(
            f"--decoding-method {params.decoding_method}"
            + (f" with --nbest-scale {params.nbest_scale}" if params.nbest_scale > 0 else "")
            + " needs an LM: pass --lm-type ngram|rnn and --lm-path (prepare.sh stage 6 trains them)"
        )
    if params.lm_path is None or not Path(params.lm_path).is_file():
        raise FileNotFoundError(
            f"--lm-path {params.lm_path}: no such file; train one with local/train_lm.py (prepare.sh stage 6)"
        )
    from icefall_cif.lm import load_lm as _load

    return _load(params.lm_type, params.lm_path, device=device)


def main(recipe: Recipe, description: str = "") -> None:
    """Entry point of a recipe's decode.py: parse the options and decode every test set.

    A problem with the options or the files ends the script with its message and exit status 1.
    """
    try:
        run_decoding(get_parser(recipe, description).parse_args(), recipe)
    except (ValueError, FileNotFoundError) as e:
        logging.error(str(e))
        sys.exit(f"decode.py: error: {e}")


def run_decoding(args: argparse.Namespace, recipe: Recipe) -> Dict[str, float]:
    """Decode each test set of the recipe; return {test_set: error rate in %}."""
    # Decoding reads the cut ids of each batch.
    args.return_cuts = True
    params = AttributeDict(vars(args))
    params.res_dir = params.exp_dir / params.decoding_method
    setup_logger(params.res_dir / f"log-decode-{params.decoding_method}")
    num_threads = set_num_threads(params.num_threads, processes_on_node=1)
    logging.info(f"Decoding {recipe.name} with {num_threads} thread(s): {dict(params)}")

    tokenizer = Tokenizer.from_lang_dir(params.lang_dir)

    # Fail on a missing test manifest before the slow work.
    datamodule = AsrDataModule(args)
    for name in recipe.test_sets:
        path = datamodule.cuts_path(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} (test set '{name}') not found. Create it with prepare.sh (stages 0-2) in "
                f"egs/{recipe.name}/ASR, or point --manifest-dir at the directory that has it."
            )

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    state, suffix, trained = select_model_weights(params)
    check_token_table(trained, tokenizer, f"The model in {params.exp_dir}",
                      "pass the --lang-dir it was trained with (see the 'Options' line of its log-train-*)")
    model = recipe.get_model(model_config_for_decoding(recipe, params, trained, tokenizer))
    check_model(model)
    if params.decoding_method not in decoding_methods(model):
        raise ValueError(
            f"--decoding-method {params.decoding_method} does not apply to the decoder type "
            f"'{model.head.name}' of the model in {params.exp_dir}; use one of {decoding_methods(model)}"
        )
    load_weights(model, state, params)
    model.to(device).eval()
    lm = load_lm(params, device)

    error_rates = {}
    key = results_key(params, model.head)
    for name in recipe.test_sets:
        dl = datamodule.test_dataloaders(datamodule.load_cuts(name))
        plot_dir = params.res_dir / f"cif-plots-{name}" if params.num_plots > 0 else None
        results, decode_seconds, audio_seconds, fire_differences = decode_dataset(
            dl, params, model, tokenizer, device, lm, plot_dir
        )
        rates = save_results(
            params.res_dir,
            name,
            {key: results},
            compute_CER=tokenizer.error_rate_name == "CER",
            suffix=f"-{suffix}",
        )
        error_rates[name] = rates[key]
        rtf = decode_seconds / max(audio_seconds, 1e-9)
        message = (
            f"{name}: {tokenizer.error_rate_name} {rates[key]:.2f}% over {len(results)} utterances, "
            f"RTF {rtf:.4f} ({decode_seconds:.2f} s for {audio_seconds:.1f} s of audio, "
            f"{torch.get_num_threads()} threads, {device.type})"
        )
        logging.info(message)
        (params.res_dir / f"rtf-{name}-{key}-{suffix}.txt").write_text(message + "\n")
        fires = write_fire_counts(params.res_dir / f"fires-{name}-{suffix}.txt", fire_differences)
        logging.info(f"{name}: CIF fires - reference tokens: mean {fires['mean']:+.3f}, mean |.| "
                     f"{fires['mean_abs']:.3f}, exact {100 * fires['exact']:.1f}% of {fires['utterances']} utterances")
    logging.info("Done!")
    return error_rates
