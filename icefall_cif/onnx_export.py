"""`export-onnx.py`: the averaged model of a training run as ONNX files (docs/deployment.md).

    ./zipformer_cif/export-onnx.py --exp-dir zipformer_cif/exp --epoch 30 --avg 9 --use-averaged-model 1 \
      --tokens data/lang_bpe_500/tokens.txt --int8 1

One layout per decoder type, suffix `epoch-N-avg-K` (or `iter-I-avg-K`):

- cif_transducer, icefall's offline Zipformer transducer layout, which sherpa-onnx decodes
  (`OfflineRecognizer.from_transducer`):
    encoder-<suffix>.onnx  x (N, T, 80) float, x_lens (N,) int64
                           -> encoder_out (N, U * S, joiner_dim), encoder_out_lens (N,) int64
                           (Zipformer, CIF, joiner encoder projection; S = --max-sym-per-frame)
    decoder-<suffix>.onnx  y (N, context_size) int64 -> decoder_out (N, joiner_dim)
    joiner-<suffix>.onnx   encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, V)
- cif_ce_nar, sherpa-onnx's zipformer2_ctc layout (`OfflineRecognizer.from_zipformer_ctc`):
    model-<suffix>.onnx    x, x_lens -> log_probs (N, 2U, V), log_probs_len (N,) int64
                           (row 2u: the log-softmax of token u; row 2u + 1: blank with certainty)
- cif_ce_ar, for onnx_pretrained.py (sherpa-onnx has no layout for it):
    encoder-<suffix>.onnx  x, x_lens -> cif (N, U, C), cif_lens (N,) int64, fire_frames (N, U) int64
    decoder-<suffix>.onnx  cif_u (N, C), prev_token (N,) int64, cache (L, N, u, D)
                           -> logits (N, V), new_cache (L, N, u + 1, D)

`--int8 1` also writes `*.int8.onnx`, dynamically quantised (int8 weights of MatMul).
"""
import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from icefall_cif.cif_dense import dense_integrate_and_fire
from icefall_cif.decode.loop import add_model_selection_arguments, model_config_for_decoding, select_model_weights
from icefall_cif.export import inference_model
from icefall_cif.recipe import Recipe
from icefall_cif.tokenizer import Tokenizer, check_token_table, read_tokens_txt
from icefall_cif.utils import AttributeDict

#: icefall exports with opset 13; 14 is the first with scaled_dot_product_attention, which the
#: CE decoders' nn.MultiheadAttention calls.
OPSET = 14
#: Value of the encoder's `version` metadata; onnx_pretrained.py refuses other versions.
LAYOUT_VERSION = "1"
SUPPORTED_DECODER_TYPES = ("cif_transducer", "cif_ce_ar", "cif_ce_nar")


class CifFrontEnd(nn.Module):
    """Zipformer, extra downsampling, weight predictor and dense CIF, as in inference.

    The shared first part of every encoder graph; `forward_cif` of the model with
    `dense_integrate_and_fire` in place of `integrate_and_fire`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        predictor = model.cif_predictor
        self.threshold = predictor.threshold
        self.tail_threshold = predictor.tail_threshold

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
          x: (N, T, 80) fbank, padded with any value; x_lens: (N,) int64 valid frames, max = T.
        Returns:
          encoder_out (N, T', C) @25 Hz, encoder_out_lens (N,), cif (N, U, C), cif_lens (N,),
          fire_frames (N, U) at the CIF frame rate (-1 at padding).
        """
        encoder_out, encoder_out_lens = self.model.forward_encoder(x, x_lens)
        h, h_lens = self.model.downsample_for_cif(encoder_out, encoder_out_lens)
        side_input = self.model.predictor_side_input(encoder_out, encoder_out_lens)
        alpha = self.model.cif_predictor.compute_weights(h, h_lens, side_input)
        cif = dense_integrate_and_fire(h, alpha, h_lens, self.threshold, self.tail_threshold)
        return encoder_out, encoder_out_lens, cif.cif, cif.cif_lens, cif.fire_frames


class TransducerEncoder(nn.Module):
    """encoder.onnx of cif_transducer: the CIF vectors through the joiner's encoder projection,
    each repeated `max_sym_per_frame` times.

    sherpa-onnx emits at most one symbol per encoder frame and moves to the next frame after a
    blank; with S copies of a vector its greedy search is ours with up to S symbols per vector
    (a blank on a copy repeats on the following copies, the decoder state being unchanged).
    """

    def __init__(self, model: nn.Module, max_sym_per_frame: int):
        super().__init__()
        self.front_end = CifFrontEnd(model)
        self.encoder_proj = model.head.joiner.encoder_proj
        self.max_sym_per_frame = max_sym_per_frame

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 80), (N,) -> encoder_out (N, U * S, joiner_dim), encoder_out_lens (N,) = cif_lens * S."""
        _, _, cif, cif_lens, _ = self.front_end(x, x_lens)
        proj = self.encoder_proj(cif)  # (N, U, J)
        N, U, J = proj.shape
        S = self.max_sym_per_frame
        repeated = proj.unsqueeze(2).expand(N, U, S, J).reshape(N, U * S, J)
        return repeated, cif_lens * S


class TransducerDecoder(nn.Module):
    """decoder.onnx: the stateless prediction network and the joiner's decoder projection."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder = model.head.decoder
        self.decoder_proj = model.head.joiner.decoder_proj

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """y: (N, context_size) int64, -1 = no token yet -> (N, joiner_dim)."""
        return self.decoder_proj(self.decoder(y, need_pad=False).squeeze(1))


class TransducerJoiner(nn.Module):
    """joiner.onnx: both inputs already projected."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.joiner = model.head.joiner

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """(N, joiner_dim), (N, joiner_dim) -> logit (N, V)."""
        return self.joiner(encoder_out, decoder_out, project_input=False)


class ArEncoder(nn.Module):
    """encoder.onnx of cif_ce_ar: the CIF vectors and their fire frames."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.front_end = CifFrontEnd(model)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, T, 80), (N,) -> cif (N, U, C), cif_lens (N,), fire_frames (N, U)."""
        _, _, cif, cif_lens, fire_frames = self.front_end(x, x_lens)
        return cif, cif_lens, fire_frames


class ArDecoderStep(nn.Module):
    """decoder.onnx of cif_ce_ar: `ArCeDecoder.forward_step` with its cache as one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        # A step's self-attention attends from the new position to the cached ones plus itself:
        # key and value are one tensor, as in the NAR decoder's cross-attention.
        self.ce_decoder = copy.deepcopy(model.head.ce_decoder)
        for layer in self.ce_decoder.layers:
            layer.self_attn = _DistinctKeyValue(layer.self_attn)

    def forward(
        self, cif_u: torch.Tensor, prev_token: torch.Tensor, cache: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
          cif_u: (N, C) CIF vector u; prev_token: (N,) int64 token u-1 (blank at u = 0);
          cache: (L, N, u, D) the layer inputs of steps < u ((L, N, 0, D) at u = 0).
        Returns:
          logits (N, V) of token u and the cache (L, N, u + 1, D).
        """
        logits, new_cache = self.ce_decoder.forward_step(cif_u, prev_token, list(cache.unbind(0)))
        return logits, torch.stack(new_cache, dim=0)


class _DistinctKeyValue(nn.Module):
    """nn.MultiheadAttention called with value as a tensor distinct from key.

    With key and value the same tensor (cross-attention to the encoder frames), torch projects
    them together and then unflattens the result, and the traced graph keeps the number of
    frames of the example input as a constant; separate projections trace with dynamic shapes.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs):
        """(N, Q, D), (N, S, D), (N, S, D) -> nn.MultiheadAttention's outputs."""
        return self.attention(query, key, value.clone(), **kwargs)


class NarCtcModel(nn.Module):
    """model.onnx of cif_ce_nar in sherpa-onnx's zipformer2_ctc layout.

    CTC greedy search takes the argmax of each row, merges repeats and drops blanks. Row 2u
    holds token u's log-probs and row 2u + 1 a certain blank, so the search returns exactly the
    per-position argmax of the NAR decoder, repeated tokens included.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.front_end = CifFrontEnd(model)
        self.ce_decoder = copy.deepcopy(model.head.ce_decoder)
        for layer in self.ce_decoder.layers:
            layer.src_attn = _DistinctKeyValue(layer.src_attn)
        self.blank_id = model.blank_id

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 80), (N,) -> log_probs (N, 2U, V), log_probs_len (N,) = 2 cif_lens."""
        encoder_out, encoder_out_lens, cif, cif_lens, _ = self.front_end(x, x_lens)
        U = cif.size(1)
        # One extra padding vector, masked for every utterance, so that attention has a position
        # even when nothing fired (U = 0); it is dropped again after the decoder.
        padded = nn.functional.pad(cif, (0, 0, 0, 1))
        logits = self.ce_decoder(padded, cif_lens, encoder_out, encoder_out_lens)[:, :U]
        log_probs = logits.log_softmax(dim=-1)
        N, _, V = log_probs.shape
        # log 0 as a large finite number: -inf rows would turn into NaN after int8 quantisation.
        blank_row = torch.full_like(log_probs, -1.0e4)
        blank_row[..., self.blank_id] = 0.0
        interleaved = torch.stack([log_probs, blank_row], dim=2).reshape(N, 2 * U, V)
        return interleaved, cif_lens * 2


def load_selected_model(args: argparse.Namespace, recipe: Recipe) -> Tuple[nn.Module, str, int]:
    """The averaged model (eval mode) named by the selection options, the file suffix
    `epoch-N-avg-K` / `iter-I-avg-K` of icefall's ONNX exports, and the feature dimension."""
    params = AttributeDict(vars(args))
    if not params.tokens.is_file():
        raise FileNotFoundError(f"--tokens {params.tokens}: no such file (prepare.sh stage 3 writes it)")
    tokenizer = Tokenizer(read_tokens_txt(params.tokens))
    state, _, trained = select_model_weights(params)
    check_token_table(trained, tokenizer, f"The model in {params.exp_dir}", "pass the --tokens it was trained with")
    config = model_config_for_decoding(recipe, params, trained, tokenizer)
    if config.decoder_type not in SUPPORTED_DECODER_TYPES:
        raise ValueError(f"The model in {params.exp_dir} has decoder type {config.decoder_type}; export-onnx.py "
                         f"has layouts for {list(SUPPORTED_DECODER_TYPES)}")
    model, config = inference_model(recipe, config, state, params)
    suffix = f"iter-{params.iter}-avg-{params.avg}" if params.iter > 0 else f"epoch-{params.epoch}-avg-{params.avg}"
    return model.eval(), suffix, config.feature_dim


def add_meta_data(filename: Path, meta_data: Dict[str, str]) -> None:
    """Write string metadata into an ONNX file (sherpa-onnx reads e.g. vocab_size from it)."""
    import onnx

    model = onnx.load(str(filename))
    del model.metadata_props[:]
    for key, value in meta_data.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(filename))


def _export(
    module: nn.Module,
    inputs: Tuple[torch.Tensor, ...],
    filename: Path,
    input_names: List[str],
    output_names: List[str],
    dynamic_axes: Dict[str, Dict[int, str]],
    meta_data: Dict[str, str],
) -> Path:
    # The TorchScript-based exporter (icefall's): the torch.export one needs onnxscript and
    # specialises the data-dependent number of CIF tokens. Its tracer warns about every
    # Python-level shape check (input validation that the graph drops); test_onnx_export.py
    # checks that the graphs generalise across batch sizes and lengths instead.
    # nn.MultiheadAttention's fused inference path (the NAR decoder's self-attention takes it)
    # has no ONNX symbolic; the unfused path computes the same.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
            torch.onnx.export(
                module, inputs, str(filename), dynamo=False, opset_version=OPSET, input_names=input_names,
                output_names=output_names, dynamic_axes=dynamic_axes,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    add_meta_data(filename, meta_data)
    logging.info(f"Wrote {filename}")
    return filename


def example_features(num_frames: Tuple[int, ...] = (300, 250), feature_dim: int = 80) -> Tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random features (x (N, T, F), x_lens (N,)) to trace with; the graphs
    do not depend on these sizes."""
    x = torch.randn(len(num_frames), max(num_frames), feature_dim)
    return x, torch.tensor(num_frames, dtype=torch.int64)


def common_meta_data(model: nn.Module) -> Dict[str, str]:
    """Metadata of every file: what onnx_pretrained.py needs to pick the layout and check it."""
    return {
        "model_author": "icefall_cif",
        "version": LAYOUT_VERSION,
        "decoder_type": model.decoder_type,
        "vocab_size": str(model.vocab_size),
        "cif_downsample": str(model.cif_downsample_factor),
        "cif_threshold": str(model.cif_predictor.threshold),
        "tail_threshold": str(model.cif_predictor.tail_threshold),
    }


def export_onnx(
    model: nn.Module, out_dir: Path, suffix: str, max_sym_per_frame: int, feature_dim: int = 80
) -> List[Path]:
    """Write the ONNX files of `model`'s layout (module docstring) into out_dir; return them."""
    if max_sym_per_frame < 1:
        raise ValueError(f"--max-sym-per-frame must be >= 1, got {max_sym_per_frame}")
    out_dir.mkdir(parents=True, exist_ok=True)
    x, x_lens = example_features(feature_dim=feature_dim)
    meta = common_meta_data(model)
    feats = {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}}
    kind = model.decoder_type
    if kind == "cif_transducer":
        head = model.head
        joiner_dim = head.joiner.output_linear.in_features
        encoder = _export(
            TransducerEncoder(model, max_sym_per_frame), (x, x_lens), out_dir / f"encoder-{suffix}.onnx",
            ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
            {**feats, "encoder_out": {0: "N", 1: "T_out"}, "encoder_out_lens": {0: "N"}},
            {**meta, "model_type": "zipformer2", "max_sym_per_frame": str(max_sym_per_frame),
             "comment": f"CIF transducer: Zipformer + CIF + joiner encoder_proj, each CIF vector repeated "
                        f"{max_sym_per_frame} times"},
        )
        context_size = head.decoder.context_size
        y = torch.full((3, context_size), -1, dtype=torch.int64)
        y[:, -1] = torch.tensor([0, 5, 7])
        decoder = _export(
            TransducerDecoder(model), (y,), out_dir / f"decoder-{suffix}.onnx", ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}},
            {**meta, "context_size": str(context_size)},
        )
        joiner = _export(
            TransducerJoiner(model), (torch.randn(3, joiner_dim), torch.randn(3, joiner_dim)),
            out_dir / f"joiner-{suffix}.onnx", ["encoder_out", "decoder_out"], ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
            {**meta, "joiner_dim": str(joiner_dim)},
        )
        return [encoder, decoder, joiner]
    if kind == "cif_ce_nar":
        return [_export(
            NarCtcModel(model), (x, x_lens), out_dir / f"model-{suffix}.onnx", ["x", "x_lens"],
            ["log_probs", "log_probs_len"], {**feats, "log_probs": {0: "N", 1: "T_out"}, "log_probs_len": {0: "N"}},
            {**meta, "model_type": "zipformer2_ctc",
             "comment": "CIF + NAR CE decoder; rows alternate token u and a certain blank"},
        )]
    # cif_ce_ar
    ce_decoder = model.head.ce_decoder
    encoder = _export(
        ArEncoder(model), (x, x_lens), out_dir / f"encoder-{suffix}.onnx", ["x", "x_lens"],
        ["cif", "cif_lens", "fire_frames"],
        {**feats, "cif": {0: "N", 1: "U"}, "cif_lens": {0: "N"}, "fire_frames": {0: "N", 1: "U"}},
        {**meta, "comment": "CIF AR CE encoder: Zipformer + CIF vectors"},
    )
    num_layers, d_model = len(ce_decoder.layers), ce_decoder.d_model
    cif_dim = model.encoder_dim
    step_inputs = (torch.randn(2, cif_dim), torch.tensor([0, 4]), torch.randn(num_layers, 2, 3, d_model))
    decoder = _export(
        ArDecoderStep(model), step_inputs, out_dir / f"decoder-{suffix}.onnx", ["cif_u", "prev_token", "cache"],
        ["logits", "new_cache"],
        {"cif_u": {0: "N"}, "prev_token": {0: "N"}, "cache": {1: "N", 2: "u"}, "logits": {0: "N"},
         "new_cache": {1: "N", 2: "u_next"}},
        {**meta, "num_layers": str(num_layers), "d_model": str(d_model), "blank_id": str(model.blank_id)},
    )
    return [encoder, decoder]


def quantize_int8(filenames: List[Path]) -> List[Path]:
    """Dynamically quantised copies `<name>.int8.onnx` (int8 MatMul weights, as icefall's)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = []
    root = logging.getLogger()
    for filename in filenames:
        target = filename.with_suffix(".int8.onnx")
        # The quantiser logs every tensor it leaves in float at INFO on the root logger.
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(filename), str(target), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        logging.info(f"Wrote {target}")
        out.append(target)
    return out


def get_parser(recipe: Recipe, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_selection_arguments(parser)
    parser.add_argument("--tokens", type=Path, default=Path(recipe.default_lang_dir) / "tokens.txt",
                        help="The tokens.txt the model was trained with (checked against the checkpoint).")
    parser.add_argument("--max-sym-per-frame", type=int, default=3,
                        help="cif_transducer: copies of each CIF vector in encoder.onnx, i.e. the most tokens a "
                             "vector may emit in sherpa-onnx's one-symbol-per-frame search (decode.py's option).")
    parser.add_argument("--int8", type=int, default=0, choices=[0, 1], help="Also write *.int8.onnx.")
    parser.add_argument("--output-dir", type=Path, default=None, help="Where to write; default --exp-dir.")
    return parser


def run(args: argparse.Namespace, recipe: Recipe) -> Tuple[List[Path], str]:
    """Export the selected model (and its int8 copies); return the files written and the
    decoder type."""
    model, suffix, feature_dim = load_selected_model(args, recipe)
    files = export_onnx(model, args.output_dir or args.exp_dir, suffix, args.max_sym_per_frame, feature_dim)
    if args.int8:
        files += quantize_int8(list(files))
    return files, model.decoder_type


def model_file_option(role: str) -> str:
    """onnx_pretrained.py's option for the file of `role` ("encoder", "decoder", "joiner", "model")."""
    return "--model-filename" if role == "model" else f"--{role}-model-filename"


def sherpa_command(files: List[Path], tokens: Path, decoder_type: str) -> Optional[str]:
    """The sherpa-onnx-offline command line that decodes a file with `files`, if sherpa-onnx has a
    layout for the decoder type."""
    by_role = {f.name.split("-", 1)[0]: f for f in files}
    if decoder_type == "cif_transducer":
        return (f"sherpa-onnx-offline --tokens={tokens} --encoder={by_role['encoder']} "
                f"--decoder={by_role['decoder']} --joiner={by_role['joiner']} --num-threads=1 FILE.wav")
    if decoder_type == "cif_ce_nar":
        return f"sherpa-onnx-offline --tokens={tokens} --zipformer2-ctc-model={by_role['model']} --num-threads=1 FILE.wav"
    return None


def main(recipe: Recipe, description: str = "") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = get_parser(recipe, description).parse_args()
    try:
        files, decoder_type = run(args, recipe)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"export-onnx.py: error: {e}")
    fp32 = [f for f in files if not f.name.endswith(".int8.onnx")]
    options = " ".join(f"{model_file_option(f.name.split('-', 1)[0])} {f}" for f in fp32)
    print(f"Decode a file with onnxruntime:\n  ./zipformer_cif/onnx_pretrained.py --tokens {args.tokens} {options} FILE.wav")
    command = sherpa_command(fp32, args.tokens, decoder_type)
    if command is not None:
        print(f"with sherpa-onnx's Python package:\n  ./zipformer_cif/onnx_pretrained.py --runtime sherpa-onnx "
              f"--tokens {args.tokens} {options} FILE.wav\nor with its C++ binary:\n  {command}")
