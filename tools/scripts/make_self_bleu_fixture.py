#!/usr/bin/env python3
"""Self-BLEU fixture made with nltk's sentence_bleu (an implementation
written by others, from the BLEU formula of Papineni et al. 2002), for
train/tests/eval.rs.

Writes tests/fixtures/eval/self_bleu.json: sets of samples (one set = the
samples of one prompt) and, for each set,
- the words of each sample, split by the rule of the synthetic annotator
  (train/src/eval/annotator.rs `words`), re-implemented here with a regex:
  lowercase, ’ ‘ ` read as ', words are runs of letters, digits and
  apostrophes, apostrophes trimmed from both ends (the texts are ASCII
  apart from ’ so \\w-vs-alphanumeric differences cannot arise);
- the BLEU-3 of each sample against the other samples of its set
  (nltk.translate.bleu_score.sentence_bleu, weights (1/3, 1/3, 1/3),
  smoothing_function=SmoothingFunction().method1, as Texygen's Self-BLEU);
- the set's Self-BLEU (the mean of those), and the mean over sets.

The sets: hand cases (identical samples, disjoint samples, one-word
samples, duplicates) and seeded random sets made by perturbing a base
sentence (word substitutions, deletions, insertions) so that n-gram
overlaps of every order occur.

Usage (from the repository root):

    /work/pyref/venv/bin/python tools/scripts/make_self_bleu_fixture.py
"""

import json
import random
import re
import warnings

import nltk
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

WORDS = (
    "the a sea ship sails at dawn and night mouse brave little cat owner "
    "letter dream summer city clouds bakery bread warm sun light river "
    "stone old new sings quietly runs far home"
).split()


def words(text):
    t = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").lower()
    out = []
    for w in re.findall(r"[a-z0-9']+", t):
        w = w.strip("'")
        if w:
            out.append(w)
    return out


def perturb(rng, base):
    w = list(base)
    for _ in range(rng.randint(0, 4)):
        op = rng.random()
        if op < 0.4 and w:
            w[rng.randrange(len(w))] = rng.choice(WORDS)
        elif op < 0.7 and len(w) > 1:
            del w[rng.randrange(len(w))]
        else:
            w.insert(rng.randrange(len(w) + 1), rng.choice(WORDS))
    text = " ".join(w)
    # punctuation, capitals and apostrophes that the word rule removes or keeps
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:] + rng.choice([".", "!", "?", " ..."])
    if rng.random() < 0.2:
        text = "It\u2019s " + text
    return text


def main():
    rng = random.Random(20230718)
    sets = [
        ["the ship sails at dawn", "the ship sails at dawn", "the ship sails at dawn"],
        ["the ship sails", "a brave little mouse", "warm bread at home"],
        ["sea", "sea", "ship"],
        ["The old river runs far.", "the old river runs far", "An old stone sings quietly at night!"],
        ["It\u2019s a warm summer night", "it's a warm summer night and the city sleeps", "a dream"],
        ["the the the", "the ship"],
        ["the cat sat on the mat", "the cat sat on a mat today"],
    ]
    for k in [2, 3, 5, 8, 25]:
        base = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        sets.append([perturb(rng, base) for _ in range(k)])
    cases = []
    for texts in sets:
        ws = [words(t) for t in texts]
        bleus = []
        for i in range(len(ws)):
            refs = [ws[j] for j in range(len(ws)) if j != i]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b = sentence_bleu(refs, ws[i], weights=(1 / 3, 1 / 3, 1 / 3), smoothing_function=SmoothingFunction().method1)
                bleus.append(float(b))
        cases.append({"texts": texts, "words": ws, "bleu": bleus, "self_bleu": sum(bleus) / len(bleus)})
    out = {
        "made_by": f"tools/scripts/make_self_bleu_fixture.py with nltk {nltk.__version__}",
        "cases": cases,
        "mean_self_bleu": sum(c["self_bleu"] for c in cases) / len(cases),
    }
    with open("tests/fixtures/eval/self_bleu.json", "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(cases)} sets; mean Self-BLEU {out['mean_self_bleu']:.6f}")


if __name__ == "__main__":
    main()
