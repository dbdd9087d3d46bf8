#!/usr/bin/env python3
"""Compute all-MiniLM-L6-v2 sentence embeddings with numpy in float64, as a test reference.

This implementation shares no code with the library. The safetensors package reads the
weights, the tokenizers package turns text into token ids with the model's tokenizer.json,
and every step below runs in float64 on the host.

    1. Embeddings: word + position + token type 0, then LayerNorm.
    2. Each of the 6 layers: self-attention with 12 heads, softmax(Q K^T / sqrt(d)),
       output dense, residual and LayerNorm. Then intermediate dense, exact erf GELU,
       output dense, residual and LayerNorm.
    3. Mean pooling over all tokens of the sequence, [CLS] and [SEP] included, then L2
       normalization. These are the Pooling (mean tokens) and Normalize modules that the
       model's modules.json lists for sentence-transformers.

Sizes and the LayerNorm epsilon come from config.json, which must name the gelu activation
and absolute position embeddings.
Texts longer than --max-length tokens (default 256, the max_seq_length of the model's
sentence_bert_config.json) are truncated to that length, keeping the final [SEP], with a
warning on standard error.

Input: a UTF-8 text file with one sentence per line. Empty lines are rejected.
Output file format: one line per input sentence, in input order, holding hidden_size (384)
numbers formatted with '%.9g' and separated by single spaces. Nine significant digits
round-trip a float32 exactly.

Requirements (the versions this was written and checked with, on Python 3.11):
    numpy==2.4.6  safetensors==0.8.0  tokenizers==0.23.3

Run from the repository root after tools/setup has installed the model (Debian's python3
needs the python3-venv package for the first line):
    python3 -m venv /tmp/mca-reference
    /tmp/mca-reference/bin/pip install numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3
    /tmp/mca-reference/bin/python tests/reference_embeddings.py \\
        tests/data/encoder_sentences.txt tests/data/encoder_reference.txt
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL_DIR = os.path.join(REPO_ROOT, "models", "all-MiniLM-L6-v2")

# Element-wise erf in double precision, because numpy has no erf of its own.
_erf = np.frompyfunc(math.erf, 1, 1)


class ReferenceEncoder:
    """A BERT encoder with mean pooling, evaluated in float64."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as file:
            config = json.load(file)
        self.hidden_size = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.max_positions = int(config["max_position_embeddings"])
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"config.json: hidden_act is {config.get('hidden_act')!r}, expected 'gelu'")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("config.json: position_embedding_type must be 'absolute'")
        if self.hidden_size % self.heads != 0:
            raise ValueError(f"config.json: hidden_size {self.hidden_size} is not divisible "
                             f"by num_attention_heads {self.heads}")

        tensors = load_file(os.path.join(model_dir, "model.safetensors"))
        self.weights = {name: tensor.astype(np.float64) for name, tensor in tensors.items()
                        if tensor.dtype.kind == "f"}

    def tensor(self, name):
        try:
            return self.weights[name]
        except KeyError:
            raise KeyError(f"model.safetensors: tensor {name} not found") from None

    def dense(self, x, prefix):
        """Apply a PyTorch Linear layer: weight is (out, in)."""
        return x @ self.tensor(prefix + ".weight").T + self.tensor(prefix + ".bias")

    def layer_norm(self, x, prefix):
        mean = x.mean(axis=-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        normalized = (x - mean) / np.sqrt(variance + self.eps)
        return normalized * self.tensor(prefix + ".weight") + self.tensor(prefix + ".bias")

    def self_attention(self, x, prefix):
        n = x.shape[0]
        d = self.hidden_size // self.heads
        # (n, D) -> (H, n, d): head h owns columns h*d .. h*d + d - 1.
        q = self.dense(x, prefix + ".query").reshape(n, self.heads, d).transpose(1, 0, 2)
        k = self.dense(x, prefix + ".key").reshape(n, self.heads, d).transpose(1, 0, 2)
        v = self.dense(x, prefix + ".value").reshape(n, self.heads, d).transpose(1, 0, 2)

        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores -= scores.max(axis=-1, keepdims=True)
        probabilities = np.exp(scores)
        probabilities /= probabilities.sum(axis=-1, keepdims=True)

        context = probabilities @ v
        return context.transpose(1, 0, 2).reshape(n, self.hidden_size)

    def embed(self, token_ids):
        """Return the L2-normalized mean-pooled embedding of one token sequence."""
        n = len(token_ids)
        if n > self.max_positions:
            raise ValueError(f"{n} tokens exceed max_position_embeddings {self.max_positions}")

        ids = np.asarray(token_ids, dtype=np.int64)
        x = (self.tensor("embeddings.word_embeddings.weight")[ids]
             + self.tensor("embeddings.position_embeddings.weight")[:n]
             + self.tensor("embeddings.token_type_embeddings.weight")[0])
        x = self.layer_norm(x, "embeddings.LayerNorm")

        for index in range(self.layers):
            prefix = f"encoder.layer.{index}"
            attention = self.dense(self.self_attention(x, prefix + ".attention.self"),
                                   prefix + ".attention.output.dense")
            x = self.layer_norm(attention + x, prefix + ".attention.output.LayerNorm")

            intermediate = self.dense(x, prefix + ".intermediate.dense")
            intermediate = 0.5 * intermediate * (
                1.0 + _erf(intermediate / math.sqrt(2.0)).astype(np.float64))
            output = self.dense(intermediate, prefix + ".output.dense")
            x = self.layer_norm(output + x, prefix + ".output.LayerNorm")

        pooled = x.mean(axis=0)
        return pooled / np.linalg.norm(pooled)


def read_sentences(path):
    with open(path, encoding="utf-8") as file:
        sentences = file.read().splitlines()
    for number, sentence in enumerate(sentences, start=1):
        if not sentence.strip():
            raise ValueError(f"{path}:{number}: line is empty. Write one sentence per line.")
    return sentences


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("sentences", help="UTF-8 text file, one sentence per line")
    parser.add_argument("output", nargs="?", help="file to write (default: standard output)")
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR,
                        help="directory with config.json, model.safetensors and tokenizer.json "
                             "(default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=256,
                        help="maximum tokens per text, [CLS] and [SEP] included (default: 256)")
    args = parser.parse_args()

    sentences = read_sentences(args.sentences)
    tokenizer = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    # tokenizer.json pads and truncates every text to 128 tokens. The reference pools over
    # the real tokens only, and truncates at sentence-transformers' limit for this model.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=args.max_length)
    encoder = ReferenceEncoder(args.model)

    lines = []
    for number, sentence in enumerate(sentences, start=1):
        encoding = tokenizer.encode(sentence)
        if encoding.overflowing:
            print(f"warning: {args.sentences}:{number}: truncated to {args.max_length} tokens",
                  file=sys.stderr)
        embedding = encoder.embed(encoding.ids)
        lines.append(" ".join("%.9g" % value for value in embedding))

    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
