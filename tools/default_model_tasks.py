# SPDX-License-Identifier: Apache-2.0
"""The question-answer tasks the default model is trained on, with each question's decisive words known
by construction. Shared by the trainer (tools/train_default_model.py), the held-out set writer and the
accuracy test, so that every one of them asks the same questions.

Tasks (answer " Yes" or " No" after "A:"):
  warmth      "The cup is red. Q: Is it warm? A: Yes"            one word decides: the colour.
  size_match  "The cup is tiny. Q: Is it big? A: No"             two words decide together: the stated
                                                                 size and the asked size.
  distractor  "Tom lives in Dover. The cup is red. The box is    the colour decides; the other sentences
               huge. Q: Is the cup warm? A: Yes"                 (people, places, sizes, scripture) do not.
Held-out questions use (object, colour) and (object, size) pairs that training never shows, so the
held-out accuracy measures the rule, not memory.
"""
import random

WARM_COLOURS = ["red", "orange", "yellow", "pink", "gold"]
COLD_COLOURS = ["blue", "green", "purple", "grey", "silver"]
SMALL_SIZES = ["tiny", "small", "little"]
BIG_SIZES = ["big", "large", "huge"]
OBJECTS = [
    "cup", "box", "ball", "hat", "coat", "car", "door", "lamp", "chair", "table", "kite", "boat", "bag",
    "book", "shoe", "sock", "scarf", "bowl", "plate", "vase", "clock", "bike", "bell", "brush", "rope",
    "tent", "flag", "fence", "house", "shed", "barn", "truck", "train", "bus", "drum", "flute", "mug",
    "jar", "key", "ring", "coin", "stone", "shell", "leaf", "tree", "rose", "tulip", "apple", "pear",
    "plum", "melon", "kettle", "pot", "pan", "spoon", "fork", "knife", "towel", "pillow", "blanket",
    "rug", "mat", "wall", "roof", "gate", "bench", "desk", "shelf", "candle", "bottle", "basket",
    "bucket", "ladder", "sail", "wagon", "glove", "boot", "button", "ribbon", "balloon",
]
NAMES = ["Tom", "Ann", "Sam", "Mary", "John", "Lucy", "Peter", "Jane", "Paul", "Ruth", "Mark", "Eve",
         "Noah", "Ada", "Hugh", "Ivy"]
PLACES = ["Dover", "York", "Bath", "Leeds", "Derby", "Hull", "Ely", "Wells", "Ripon", "Truro"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TASKS = ["warmth", "size_match", "distractor"]


def _held_out_pairs(words, seed):
    """About one (object, word) pair in five, fixed by seed, appears only in held-out questions."""
    rng = random.Random(seed)
    return {(o, w) for o in OBJECTS for w in words if rng.random() < 0.2}


HELD_OUT_COLOUR_PAIRS = _held_out_pairs(WARM_COLOURS + COLD_COLOURS, 101)
HELD_OUT_SIZE_PAIRS = _held_out_pairs(SMALL_SIZES + BIG_SIZES, 202)


class Question:
    """A prompt, its answer, and the character spans of the words that decide the answer."""

    def __init__(self, task, pieces, answer):
        # pieces: list of (text, decisive) joined into the prompt; decisive pieces are single words.
        self.task = task
        self.prompt = ""
        self.decisive_spans = []
        for text, decisive in pieces:
            if decisive:
                self.decisive_spans.append((len(self.prompt), len(self.prompt) + len(text)))
            self.prompt += text
        self.answer = answer

    @property
    def decisive_words(self):
        return [self.prompt[b:e] for b, e in self.decisive_spans]

    def as_json(self):
        # The target has no leading space: the tokenizer adds the word-start marker itself (Llama style).
        return {"task": self.task, "prompt": self.prompt, "target": self.answer,
                "decisive_spans": [list(s) for s in self.decisive_spans], "decisive_words": self.decisive_words}


def _pick_pair(rng, words, held_out, want_held_out):
    while True:
        pair = (rng.choice(OBJECTS), rng.choice(words))
        if (pair in held_out) == want_held_out:
            return pair


def warmth(rng, held_out):
    obj, colour = _pick_pair(rng, WARM_COLOURS + COLD_COLOURS, HELD_OUT_COLOUR_PAIRS, held_out)
    answer = "Yes" if colour in WARM_COLOURS else "No"
    return Question("warmth", [(f"The {obj} is ", False), (colour, True), (". Q: Is it warm? A:", False)], answer)


def size_match(rng, held_out):
    obj, size = _pick_pair(rng, SMALL_SIZES + BIG_SIZES, HELD_OUT_SIZE_PAIRS, held_out)
    asked = rng.choice(["big", "small"])
    answer = "Yes" if (size in BIG_SIZES) == (asked == "big") else "No"
    return Question("size_match", [(f"The {obj} is ", False), (size, True), (". Q: Is it ", False), (asked, True),
                                   ("? A:", False)], answer)


def _distractor_sentence(rng, verses, taken):
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.choice(NAMES)} lives in {rng.choice(PLACES)}."
    if kind == 1:
        return f"{rng.choice(NAMES)} came home on {rng.choice(DAYS)}."
    if kind == 2:
        other = rng.choice([o for o in OBJECTS if o not in taken])
        taken.add(other)
        return f"The {other} is {rng.choice(SMALL_SIZES + BIG_SIZES)}."
    return rng.choice(verses) if verses else f"{rng.choice(NAMES)} sat down."


def distractor(rng, held_out, verses):
    obj, colour = _pick_pair(rng, WARM_COLOURS + COLD_COLOURS, HELD_OUT_COLOUR_PAIRS, held_out)
    taken = {obj}
    n_before = rng.randint(0, 2)
    n_after = rng.randint(1 if n_before == 0 else 0, 2)
    before = [_distractor_sentence(rng, verses, taken) for _ in range(n_before)]
    after = [_distractor_sentence(rng, verses, taken) for _ in range(n_after)]
    lead = " ".join(before) + (" " if before else "")
    tail = " " + " ".join(after) if after else ""
    answer = "Yes" if colour in WARM_COLOURS else "No"
    return Question("distractor", [(f"{lead}The {obj} is ", False), (colour, True),
                                   (f".{tail} Q: Is the {obj} warm? A:", False)], answer)


def question(task, rng, held_out, verses=()):
    if task == "warmth":
        return warmth(rng, held_out)
    if task == "size_match":
        return size_match(rng, held_out)
    return distractor(rng, held_out, verses)


def held_out_questions(per_task, seed=7, verses=()):
    """per_task held-out questions of every task, the same on every call with the same arguments."""
    rng = random.Random(seed)
    return [question(task, rng, True, verses) for task in TASKS for _ in range(per_task)]


def last_token_logits(model, encoded):
    """Next-token logits after each token-id list in `encoded`, run as one left-padded batch (every
    prompt ends in the last column) through a transformers causal LM."""
    import torch
    width = max(map(len, encoded))
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
