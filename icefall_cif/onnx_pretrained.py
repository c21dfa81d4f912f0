"""`onnx_pretrained.py`: transcribe sound files with the ONNX files of export-onnx.py (onnxruntime).

    ./zipformer_cif/onnx_pretrained.py --tokens data/lang_bpe_500/tokens.txt \
      --encoder-model-filename exp/encoder-epoch-30-avg-9.onnx \
      --decoder-model-filename exp/decoder-epoch-30-avg-9.onnx \
      --joiner-model-filename exp/joiner-epoch-30-avg-9.onnx a.flac b.wav

The decoder type is read from the metadata of the first file: cif_transducer needs the encoder,
decoder and joiner; cif_ce_ar the encoder and decoder; cif_ce_nar `--model-filename` (its
zipformer2_ctc model.onnx). Every search is greedy and gives pretrained.py's greedy_search
transcripts: the transducer emits one symbol per encoder frame, and encoder.onnx already repeats
each CIF vector `max_sym_per_frame` times; the AR decoder feeds its argmax back one CIF vector
at a time; the NAR model's token rows are its argmax. Audio is read as pretrained.py reads it
(any format and rate, mixed to mono, resampled to 16 kHz, the recipes' fbank).
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from icefall_cif.onnx_export import LAYOUT_VERSION, model_file_option
from icefall_cif.corpora.audit import SAMPLE_RATE
from icefall_cif.pretrained import AudioError, add_duration_limit_argument, features_of, read_audio
from icefall_cif.tokenizer import Tokenizer, read_tokens_txt

#: What each decoder type needs besides the file the metadata is read from.
REQUIRED_FILES = {
    "cif_transducer": ("encoder", "decoder", "joiner"),
    "cif_ce_ar": ("encoder", "decoder"),
    "cif_ce_nar": ("model",),
}
#: The value sherpa-onnx pads features with (log of Lhotse's energy floor).
FEATURE_PADDING = -23.025850929940457
#: The traced Zipformer's relative positional table covers 2000 frames at 50 Hz: ~40 s of audio.
MAX_SECONDS = 40.0


def get_parser(description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder-model-filename", type=Path, default=None,
                        help="encoder-*.onnx (cif_transducer, cif_ce_ar).")
    parser.add_argument("--decoder-model-filename", type=Path, default=None,
                        help="decoder-*.onnx (cif_transducer, cif_ce_ar).")
    parser.add_argument("--joiner-model-filename", type=Path, default=None, help="joiner-*.onnx (cif_transducer).")
    parser.add_argument("--model-filename", type=Path, default=None, help="model-*.onnx (cif_ce_nar).")
    parser.add_argument("--tokens", type=Path, required=True, help="The tokens.txt of the model.")
    parser.add_argument("--runtime", type=str, default="onnxruntime", choices=["onnxruntime", "sherpa-onnx"],
                        help="onnxruntime: this module's greedy search; sherpa-onnx: its OfflineRecognizer, with its own "
                             "fbank (cif_transducer, cif_ce_nar).")
    parser.add_argument("--num-threads", type=int, default=1, help="onnxruntime / sherpa-onnx threads.")
    parser.add_argument("--output-file", type=Path, default=None, help="Write `<path>\\t<transcript>` lines here.")
    add_duration_limit_argument(parser, default=MAX_SECONDS, why="the exported Zipformer's positional table ends there")
    parser.add_argument("files", nargs="+", type=Path, help="Sound files to transcribe.")
    return parser


def _session(path: Path, option: str, num_threads: int):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxCifModel:
    """The sessions of one export and its greedy search.

    Args:
      files: {"encoder"|"decoder"|"joiner"|"model": path or None}, as the options name them.
      num_threads: onnxruntime intra-op threads per session.
    Raises:
      ValueError naming the option when a file is missing for the layout or is not from
      export-onnx.py.
    """

    def __init__(self, files: Dict[str, Optional[Path]], num_threads: int = 1):
        given = {role: path for role, path in files.items() if path is not None}
        if not given:
            raise ValueError("give --encoder-model-filename (cif_transducer, cif_ce_ar) or --model-filename (cif_ce_nar)")
        first_role = "model" if "model" in given else "encoder"
        if first_role not in given:
            raise ValueError("--encoder-model-filename (or --model-filename for cif_ce_nar) is required")
        first = _session(given[first_role], model_file_option(first_role), num_threads)
        meta = first.get_modelmeta().custom_metadata_map
        self.decoder_type = meta.get("decoder_type")
        if self.decoder_type not in REQUIRED_FILES or meta.get("version") != LAYOUT_VERSION:
            raise ValueError(f"{model_file_option(first_role)} {given[first_role]} is not an export-onnx.py file of layout version "
                             f"{LAYOUT_VERSION} (metadata decoder_type={self.decoder_type}, version={meta.get('version')})")
        needed = REQUIRED_FILES[self.decoder_type]
        if first_role not in needed:
            raise ValueError(f"{given[first_role]} is a {self.decoder_type} model: pass it as {model_file_option(needed[0])}")
        missing = [model_file_option(role) for role in needed if role not in given]
        if missing:
            raise ValueError(f"{given[first_role]} is a {self.decoder_type} model, which also needs {', '.join(missing)}")
        self.sessions = {first_role: first}
        for role in needed:
            if role != first_role:
                self.sessions[role] = _session(given[role], model_file_option(role), num_threads)
        self.meta = meta
        self.max_sym_per_frame = int(meta.get("max_sym_per_frame", 1))
        if self.decoder_type == "cif_transducer":
            self.context_size = int(self.sessions["decoder"].get_modelmeta().custom_metadata_map["context_size"])
        if self.decoder_type == "cif_ce_ar":
            step_meta = self.sessions["decoder"].get_modelmeta().custom_metadata_map
            self.blank_id = int(step_meta["blank_id"])
            self.cache_shape = (int(step_meta["num_layers"]), int(step_meta["d_model"]))

    def transcribe_ids(self, feats: Sequence[np.ndarray]) -> List[List[int]]:
        """Greedy token ids of each (T_i, 80) float32 feature matrix, decoded as one batch."""
        lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
        x = np.full((len(feats), int(lens.max()), feats[0].shape[1]), FEATURE_PADDING, dtype=np.float32)
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        if self.decoder_type == "cif_transducer":
            encoder_out, encoder_out_lens = self.sessions["encoder"].run(None, {"x": x, "x_lens": lens})
            return self._transducer_greedy(encoder_out, encoder_out_lens)
        if self.decoder_type == "cif_ce_ar":
            # A model with a CTC prior (--ce-ctc-prior-scale) has a fourth output, token_prior.
            cif, cif_lens, _, *prior = self.sessions["encoder"].run(None, {"x": x, "x_lens": lens})
            return self._ar_greedy(cif, cif_lens, prior[0] if prior else None)
        log_probs, log_probs_len = self.sessions["model"].run(None, {"x": x, "x_lens": lens})
        # Rows 2u hold the token posteriors; the odd rows are the certain blanks.
        best = log_probs[:, 0::2].argmax(axis=-1)
        return [best[i, : n // 2].tolist() for i, n in enumerate(log_probs_len)]

    def _transducer_greedy(self, encoder_out: np.ndarray, encoder_out_lens: np.ndarray) -> List[List[int]]:
        """One symbol per encoder frame (blank 0), as sherpa-onnx's greedy search; any other id,
        <unk> included, is emitted (pretrained.py's greedy_search does the same).

        encoder_out: (N, T, J); encoder_out_lens: (N,). The decoder sees the last context_size
        tokens, -1 standing for "no token yet" before the initial blank.
        """
        N = encoder_out.shape[0]
        contexts = [[-1] * (self.context_size - 1) + [0] for _ in range(N)]
        hyps: List[List[int]] = [[] for _ in range(N)]
        decoder, joiner = self.sessions["decoder"], self.sessions["joiner"]
        decoder_out = decoder.run(None, {"y": np.array(contexts, dtype=np.int64)})[0]  # (N, J)
        for t in range(int(encoder_out_lens.max(initial=0))):
            active = np.nonzero(encoder_out_lens > t)[0]
            logits = joiner.run(None, {"encoder_out": encoder_out[active, t], "decoder_out": decoder_out[active]})[0]
            best = logits.argmax(axis=-1)
            emitted = active[best != 0]
            if emitted.size == 0:
                continue
            for i, token in zip(active, best):
                if token != 0:
                    hyps[i].append(int(token))
                    contexts[i] = contexts[i][1:] + [int(token)]
            y = np.array([contexts[i] for i in emitted], dtype=np.int64)
            decoder_out[emitted] = decoder.run(None, {"y": y})[0]
        return hyps

    def _ar_greedy(self, cif: np.ndarray, cif_lens: np.ndarray, token_prior: Optional[np.ndarray] = None) -> List[List[int]]:
        """One token per CIF vector, the argmax fed back; cif (N, U, C), cif_lens (N,), and the
        scaled CTC prior (N, U, V) that each step adds to its logits, if the model has one."""
        N, U, _ = cif.shape
        decoder = self.sessions["decoder"]
        num_layers, d_model = self.cache_shape
        cache = np.zeros((num_layers, N, 0, d_model), dtype=np.float32)
        prev = np.full(N, self.blank_id, dtype=np.int64)
        steps = []
        for u in range(U):
            step = {"cif_u": cif[:, u], "prev_token": prev, "cache": cache}
            if token_prior is not None:
                step["prior_u"] = token_prior[:, u]
            logits, cache = decoder.run(None, step)
            prev = logits.argmax(axis=-1).astype(np.int64)
            steps.append(prev)
        tokens = np.stack(steps, axis=1) if steps else np.zeros((N, 0), dtype=np.int64)
        return [tokens[i, : cif_lens[i]].tolist() for i in range(N)]


def sherpa_recognizer(model: OnnxCifModel, files: Dict[str, Optional[Path]], tokens: Path, num_threads: int = 1):
    """sherpa-onnx's OfflineRecognizer (greedy search) for the export `model` was loaded from."""
    import sherpa_onnx

    if model.decoder_type == "cif_transducer":
        return sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=str(files["encoder"]), decoder=str(files["decoder"]), joiner=str(files["joiner"]),
            tokens=str(tokens), num_threads=num_threads, decoding_method="greedy_search",
        )
    if model.decoder_type == "cif_ce_nar":
        return sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
            model=str(files["model"]), tokens=str(tokens), num_threads=num_threads, decoding_method="greedy_search"
        )
    raise ValueError(f"--runtime sherpa-onnx: sherpa-onnx has no layout for {model.decoder_type}; use --runtime onnxruntime")


def sherpa_transcribe(recognizer, samples: np.ndarray) -> str:
    """Transcript of (S,) float32 16 kHz samples, spaced as Tokenizer.decode spaces it."""
    stream = recognizer.create_stream()
    stream.accept_waveform(SAMPLE_RATE, samples)
    recognizer.decode_stream(stream)
    # sherpa-onnx turns each SentencePiece "▁" into a space, so the text starts with one.
    return " ".join(stream.result.text.split())


def run(args: argparse.Namespace) -> int:
    """Transcribe `args.files`; return the exit status (1 when some file could not be read)."""
    if args.max_utterance_duration > MAX_SECONDS:
        raise ValueError(
            f"--max-utterance-duration {args.max_utterance_duration:g}: the ONNX encoder takes at most "
            f"{MAX_SECONDS:g} s per file; split longer files, or decode them with pretrained.py"
        )
    if not args.tokens.is_file():
        raise FileNotFoundError(f"--tokens {args.tokens}: no such file")
    tokenizer = Tokenizer(read_tokens_txt(args.tokens))
    model_files = {"encoder": args.encoder_model_filename, "decoder": args.decoder_model_filename,
                   "joiner": args.joiner_model_filename, "model": args.model_filename}
    model = OnnxCifModel(model_files, args.num_threads)
    vocab_size = int(model.meta["vocab_size"])
    if vocab_size != tokenizer.vocab_size:
        raise ValueError(f"--tokens {args.tokens} has {tokenizer.vocab_size} tokens, the model {vocab_size}")
    if args.runtime == "sherpa-onnx":
        recognizer = sherpa_recognizer(model, model_files, args.tokens, args.num_threads)
        files, texts, errors = [], [], []
        for path in args.files:
            try:
                samples = read_audio(path, args.max_utterance_duration)
            except AudioError as e:
                errors.append(str(e))
                continue
            files.append(path)
            texts.append(sherpa_transcribe(recognizer, samples))
    else:
        files, feats, errors = features_of(args.files, args.max_utterance_duration)
        texts = [tokenizer.decode(hyp) for hyp in model.transcribe_ids([f.numpy() for f in feats])] if feats else []
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    lines = []
    for path, text in zip(files, texts):
        print(f"{path}:\n{text}\n")
        lines.append(f"{path}\t{text}\n")
    if args.output_file is not None:
        args.output_file.write_text("".join(lines), encoding="utf-8")
    return 1 if errors else 0


def main(description: str = "") -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        status = run(get_parser(description).parse_args())
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"onnx_pretrained.py: error: {e}")
    sys.exit(status)
