"""Benchmark of the BPE trainers and encoders (a script, not a test: pytest does not collect it).

    python tests/benchmarks/bench_bpe.py [--naive-merges 64]

Trains to vocab 1,024 on all of Tiny Shakespeare with the fast (incremental) trainer; runs the
naive recount-every-merge trainer for its first --naive-merges merges on the same text (all of it
would take minutes), checks both agree on those merges and extrapolates the naive time; then
compares encode throughput of our encoder with the exported tiktoken Encoding.
"""

import argparse
import os
import time

from slm_helpers.data import load_text
from slm_helpers.tokenizers import (
    BPETokenizer,
    gpt2_encoding,
    gpt2_tokenizer,
    train_merges,
    train_merges_naive,
)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--naive-merges", type=int, default=64,
                        help="merges to run with the naive trainer")
    args = parser.parse_args()

    text = load_text("shakespeare")
    mb = len(text.encode("utf-8")) / 1e6
    print(f"Tiny Shakespeare: {len(text):,} characters ({mb:.2f} MB); CPU cores visible: "
          f"{os.cpu_count()}")

    tok, t_fast = timed(BPETokenizer.train, text, args.vocab_size)
    n_merges = len(tok.merges)
    print(f"fast trainer : vocab {tok.vocab_size:,} ({n_merges} merges) on all the text in "
          f"{t_fast:.2f} s")

    k = min(args.naive_merges, n_merges)
    fast_k, t_fast_k = timed(train_merges, text, k, special_tokens=list(tok.special_tokens))
    naive_k, t_naive_k = timed(train_merges_naive, text, k, special_tokens=list(tok.special_tokens))
    same = naive_k == fast_k == list(tok.merges)[:k]
    est = t_naive_k / k * n_merges
    print(f"naive trainer: first {k} merges on all the text in {t_naive_k:.2f} s "
          f"(fast trainer: {t_fast_k:.2f} s for the same {k}); same merges: {same}")
    print(f"naive trainer: ~{est:.0f} s extrapolated to all {n_merges} merges "
          "(linear; later merges see fewer tokens, so likely an over-estimate) -> fast is "
          f"~{est / t_fast:.0f}x faster")

    exported = tok.to_tiktoken()
    gpt2, gpt2_tt = gpt2_tokenizer(), gpt2_encoding()
    print(f"\nencode all of Tiny Shakespeare ({mb:.2f} MB), best of 3, fresh cache each run for "
          "ours:")
    for label, ours, theirs in [("ours (vocab 1,024)", tok, exported), ("GPT-2", gpt2, gpt2_tt)]:
        t_ours = t_theirs = float("inf")
        for _ in range(3):
            ours._cache.clear()
            ids, t = timed(ours.encode, text)
            t_ours = min(t_ours, t)
            ids_tt, t = timed(theirs.encode, text)
            t_theirs = min(t_theirs, t)
        assert ids == ids_tt
        print(f"  {label:18s}: BPETokenizer {t_ours:.3f} s ({mb / t_ours:5.1f} MB/s) | "
              f"tiktoken {t_theirs:.3f} s ({mb / t_theirs:5.1f} MB/s) | {len(ids):,} tokens, same "
              "ids")


if __name__ == "__main__":
    main()
