#!/usr/bin/env python3
"""Is the CIF decoder a better token classifier than the CTC head it was trained with?

For a model with `--cif-segmentation ctc`, CIF vector u is cut around the CTC greedy path's
spike s_u, so the two heads can be compared token by token. The tool decodes exactly one
token per vector, the argmax over the non-blank tokens of

    log p_cif(token | vector u) + w * log p_ctc(token | frame s_u)

with both distributions renormalised over the non-blank tokens. p_cif is the NAR decoder's
one parallel pass (`cif_ce_nar`), the AR decoder's step u fed the tokens chosen for vectors
1..u-1 (`cif_ce_ar`), or the joiner of vector u and the prediction network after those tokens
(`cif_transducer`: greedy search with blank forbidden and one symbol per vector). w = 0 is the CIF decoder alone, a large w the CTC head alone (its
argmax at each spike is its greedy token). If no w beats the large one, the CIF decoder adds
nothing per token that the CTC head lacks. A diagnostic for RESULTS.md, not a decoding
method. Run from egs/<corpus>/ASR:

    ../../../tools/cif_ctc_fusion.py --lang-dir data/lang_bpe_500 \
      --cuts data/fbank/librispeech_cuts_test-clean.jsonl.gz --weights 0,0.5,1,2,100 \
      zipformer_cif/exp-demo-default/pretrained.pt
"""
import argparse
import sys
from pathlib import Path
from typing import List, Tuple

import torch
from lhotse import load_manifest_lazy

sys.path.insert(0, "zipformer_cif")  # the recipe's model files, as train.py sees them

from icefall_cif.pretrained import load_pretrained  # noqa: E402
from icefall_cif.scoring import compute_error_stats  # noqa: E402
from icefall_cif.segments import ctc_greedy_spikes  # noqa: E402
from icefall_cif.tokenizer import Tokenizer  # noqa: E402


def non_blank_log_softmax(logits: torch.Tensor, blank_id: int) -> torch.Tensor:
    """(..., V) -> (..., V) log-probs renormalised over the tokens other than blank (blank -inf)."""
    logits = logits.clone()
    logits[..., blank_id] = float("-inf")
    return logits.log_softmax(dim=-1)


def transducer_tokens(model, cif: torch.Tensor, ctc: torch.Tensor, weight: float) -> List[int]:
    """One token per vector of cif (U, C), the prediction network fed the chosen tokens."""
    decoder, joiner = model.head.decoder, model.head.joiner
    context = torch.full((1, decoder.context_size), -1, dtype=torch.int64)
    context[:, -1] = decoder.blank_id
    decoder_out = joiner.decoder_proj(decoder(context, need_pad=False)).squeeze(1)
    encoder_out = joiner.encoder_proj(cif)
    tokens = []
    for u in range(cif.size(0)):
        logits = joiner(encoder_out[u : u + 1], decoder_out, project_input=False)[0]
        token = int((non_blank_log_softmax(logits, model.blank_id) + weight * ctc[u]).argmax())
        tokens.append(token)
        context = torch.cat([context[:, 1:], torch.tensor([[token]])], dim=1)
        decoder_out = joiner.decoder_proj(decoder(context, need_pad=False)).squeeze(1)
    return tokens


def ar_tokens(model, cif: torch.Tensor, ctc: torch.Tensor, weight: float) -> List[int]:
    """One token per vector of cif (U, C), the AR decoder fed the chosen tokens."""
    decoder = model.head.ce_decoder
    previous = torch.tensor([model.blank_id])
    cache = None
    tokens = []
    for u in range(cif.size(0)):
        logits, cache = decoder.forward_step(cif[u : u + 1], previous, cache)
        token = int((non_blank_log_softmax(logits[0], model.blank_id) + weight * ctc[u]).argmax())
        tokens.append(token)
        previous = torch.tensor([token])
    return tokens


@torch.no_grad()
def collect(model, manifest: Path) -> List[Tuple[str, str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per cut: (id, reference, CIF vectors (U, C), NAR log-probs (U, V) or None, CTC log-probs at the spikes (U, V))."""
    rows = []
    for cut in load_manifest_lazy(manifest):
        x = torch.from_numpy(cut.load_features()).unsqueeze(0)
        encoder_out, encoder_out_lens = model.forward_encoder(x, torch.tensor([x.size(1)]))
        log_probs = model.ctc_log_probs(encoder_out)
        cif_out = model.forward_cif(encoder_out, encoder_out_lens, ctc_log_probs=log_probs)
        spikes = ctc_greedy_spikes(log_probs, encoder_out_lens, model.blank_id)[0]
        spikes = spikes[spikes >= 0]
        num_vectors = int(cif_out.cif_lens[0])
        if spikes.numel() != num_vectors:
            raise RuntimeError(f"{cut.id}: {num_vectors} CIF vectors for {spikes.numel()} CTC spikes")
        nar = None
        if model.decoder_type == "cif_ce_nar" and num_vectors > 0:
            logits = model.head.ce_decoder(cif_out.cif, cif_out.cif_lens, encoder_out, encoder_out_lens)[0]
            nar = non_blank_log_softmax(logits, model.blank_id)
        # Blank at 0 rather than -inf, so that w = 0 does not make it nan; p_cif's -inf excludes it.
        ctc = non_blank_log_softmax(log_probs[0, spikes], model.blank_id)
        ctc[:, model.blank_id] = 0.0
        reference = " ".join(s.text for s in cut.supervisions)
        rows.append((cut.id, reference, cif_out.cif[0, :num_vectors], nar, ctc))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang-dir", type=Path, required=True, help="The lang dir the model was trained with.")
    parser.add_argument("--cuts", type=Path, required=True, help="The cuts to decode (with features).")
    parser.add_argument("--weights", default="0,0.5,1,2,100", help="Comma-separated CTC weights w.")
    parser.add_argument("--cer", action="store_true", help="Count characters (AISHELL) instead of words.")
    parser.add_argument("checkpoint", type=Path, help="A pretrained.pt (export.py) of a --cif-segmentation ctc model.")
    args = parser.parse_args()
    from recipe import RECIPE

    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_lang_dir(args.lang_dir)
    model, _ = load_pretrained(RECIPE, args.checkpoint)
    if model.cif_segmentation != "ctc" or model.decoder_type not in ("cif_ce_nar", "cif_ce_ar", "cif_transducer"):
        sys.exit(f"{args.checkpoint}: needs a cif_transducer, cif_ce_ar or cif_ce_nar model trained with --cif-segmentation ctc, "
                 f"got {model.decoder_type} with '{model.cif_segmentation}'")
    if getattr(model.head, "prior_scale", 0.0) > 0:
        sys.exit(f"{args.checkpoint}: its decoder already adds the CTC log-probs at the spikes to its logits "
                 f"(--ce-ctc-prior-scale {model.head.prior_scale}); decode it with decode.py's greedy_search")
    model.eval()
    rows = collect(model, args.cuts)
    for weight in (float(w) for w in args.weights.split(",")):
        results = []
        with torch.no_grad():
            for cut_id, reference, cif, nar, ctc in rows:
                if cif.size(0) == 0:
                    tokens = []
                elif nar is not None:
                    tokens = (nar + weight * ctc).argmax(dim=-1).tolist()
                elif model.decoder_type == "cif_ce_ar":
                    tokens = ar_tokens(model, cif, ctc, weight)
                else:
                    tokens = transducer_tokens(model, cif, ctc, weight)
                results.append((cut_id, reference.split(), tokenizer.decode(tokens).split()))
        stats = compute_error_stats(results, compute_CER=args.cer)
        print(f"w {weight:g}: {'CER' if args.cer else 'WER'} {stats.error_rate:.2f} "
              f"({stats.num_ins} ins, {stats.num_del} del, {stats.num_sub} sub)", flush=True)


if __name__ == "__main__":
    main()
