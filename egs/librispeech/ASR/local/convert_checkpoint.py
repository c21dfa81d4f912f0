#!/usr/bin/env python3
"""Rewrite a checkpoint you trust as plain data (tensors, numbers, strings, lists, dicts).

Checkpoints of this repository and icefall's open safely without this; use it for a file that
decode.py or train.py refused because unpickling it would run code, once you are sure of where
it came from:

  ./local/convert_checkpoint.py exp/epoch-30.pt exp/epoch-30-plain.pt
"""
import argparse
import logging

from icefall_cif.checkpoint import convert_to_plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the trusted checkpoint")
    parser.add_argument("dst", help="where to write the plain-data copy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dropped = convert_to_plain(args.src, args.dst)
    logging.info(f"Wrote {args.dst}" + (f"; dropped entries that are not plain data: {dropped}" if dropped else ""))


if __name__ == "__main__":
    main()
