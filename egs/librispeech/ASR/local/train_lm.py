#!/usr/bin/env python3
"""Train the token LM used for shallow fusion and n-best rescoring.

    ./local/train_lm.py --lm-type ngram --order 3 --lang-dir data/lang_bpe_500 \
        --train-text data/lm/lang_bpe_500/train_tokens.txt --out-dir data/lm/lang_bpe_500
    ./local/train_lm.py --lm-type rnn --lang-dir data/lang_bpe_500 --num-epochs 10 ...

`--train-text` holds one utterance per line, either space-separated token ids (what
prepare.sh stage 4 writes to data/lm/<lang dir>/train_tokens.txt) or plain text, which is
encoded with the lang dir's tokenizer. Writes `<out-dir>/ngram_<order>gram.arpa` (Kneser-Ney,
token ids as words) or `<out-dir>/rnn_lm.pt`; decode.py loads them with
`--lm-type ngram|rnn --lm-path ...`.
"""
import argparse
import logging
import math
from pathlib import Path
from typing import List, Optional, Sequence

from icefall_cif.lm import LM_TYPES, estimate_kneser_ney, save_rnn_lm, train_rnn_lm
from icefall_cif.tokenizer import Tokenizer
from icefall_cif.utils import setup_logger


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm-type", type=str, required=True, choices=LM_TYPES)
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_bpe_500"),
                        help="Token set of the ASR model (tokens.txt / bpe.model).")
    parser.add_argument("--train-text", type=Path, default=None,
                        help="Training lines; default: data/lm/<lang-dir name>/train_tokens.txt.")
    parser.add_argument("--valid-text", type=Path, default=None,
                        help="Optional held-out lines in the same format, for perplexity; default: "
                        "data/lm/<lang-dir name>/dev_tokens.txt if it exists.")
    parser.add_argument("--input-format", type=str, default="auto", choices=["auto", "ids", "text"],
                        help="'ids': space-separated token ids; 'text': transcripts to encode with the "
                        "lang dir; 'auto': ids if every field of the file is an integer.")
    parser.add_argument("--out-dir", type=Path, default=Path("data/lm"))
    parser.add_argument("--order", type=int, default=3, help="n-gram order (ngram).")
    parser.add_argument("--embedding-dim", type=int, default=256, help="RNN LM embedding size.")
    parser.add_argument("--hidden-dim", type=int, default=512, help="RNN LM LSTM size.")
    parser.add_argument("--num-layers", type=int, default=2, help="RNN LM LSTM layers.")
    parser.add_argument("--dropout", type=float, default=0.1, help="RNN LM dropout.")
    parser.add_argument("--num-epochs", type=int, default=10, help="RNN LM epochs.")
    parser.add_argument("--batch-size", type=int, default=64, help="RNN LM sentences per batch.")
    parser.add_argument("--lr", type=float, default=1e-3, help="RNN LM Adam learning rate.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", type=str, default="cpu", help="RNN LM training device, e.g. cuda.")
    parser.add_argument("--log-file", type=Path, default=None, help="Also log to this file (a date is appended).")
    return parser


def read_lines(path: Path, tokenizer: Tokenizer, input_format: str) -> List[List[int]]:
    """Token-id sequences of the lines of `path` (ids, or text encoded with `tokenizer`)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; create it with prepare.sh stage 4 (data/lm/<lang dir>/train_tokens.txt) "
            "or pass --train-text"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if input_format == "auto":
        input_format = "ids" if all(f.isdigit() for line in lines for f in line.split()) else "text"
        logging.info(f"{path}: reading as {input_format}")
    if input_format == "text":
        return tokenizer.encode(lines)
    seqs = []
    for lineno, line in enumerate(lines, 1):
        try:
            seqs.append([int(f) for f in line.split()])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected space-separated token ids, got {line!r}; "
                             "use --input-format text for transcripts") from None
    return seqs


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Train and save the LM; returns the written file."""
    args = get_parser().parse_args(argv)
    if args.log_file is not None:
        setup_logger(args.log_file)
    else:
        logging.basicConfig(format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s",
                            level=logging.INFO)
    tokenizer = Tokenizer.from_lang_dir(args.lang_dir)
    lm_dir = Path("data/lm") / args.lang_dir.name
    train_path = args.train_text or lm_dir / "train_tokens.txt"
    valid_path = args.valid_text or (lm_dir / "dev_tokens.txt" if (lm_dir / "dev_tokens.txt").is_file() else None)
    train = read_lines(train_path, tokenizer, args.input_format)
    valid = read_lines(valid_path, tokenizer, args.input_format) if valid_path is not None else None
    logging.info(f"{len(train)} training sentences, {sum(map(len, train))} tokens, vocabulary {tokenizer.vocab_size}")
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if args.lm_type == "ngram":
        lm = estimate_kneser_ney(train, tokenizer.vocab_size, order=args.order,
                                 sos_eos_id=tokenizer.sos_id, blank_id=tokenizer.blank_id)
        out = args.out_dir / f"ngram_{args.order}gram.arpa"
        lm.save_arpa(out)
        for name, seqs in (("train", train), ("valid", valid)):
            if seqs:
                total = sum(lm.sentence_log_prob(s) for s in seqs)
                logging.info(f"{name} perplexity: {math.exp(-total / sum(len(s) + 1 for s in seqs)):.3f}")
    else:
        model, history = train_rnn_lm(
            train, tokenizer.vocab_size, valid=valid, embedding_dim=args.embedding_dim,
            hidden_dim=args.hidden_dim, num_layers=args.num_layers, dropout=args.dropout,
            num_epochs=args.num_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            device=args.device,
        )
        out = args.out_dir / "rnn_lm.pt"
        save_rnn_lm(model, out)
        logging.info(f"final epoch: {history[-1]}")
    logging.info(f"Wrote {out}; decode with --lm-type {args.lm_type} --lm-path {out}")
    return out


if __name__ == "__main__":
    main()
