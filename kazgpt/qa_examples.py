"""Question-answering training examples: a prompt in the training layout, then the answer, with
the loss counted on the answer's tokens only.

    reading      '<title>\\n<passage>\\n<question>:' + ' <answer>\\n'
    closed_book  '<question>:'                      + ' <answer>\\n'

A reading example's passage is cut to fit the context (fit_passage): whole sentences around the
one that holds the answer, so the answer span is never cut. A model answering a new question has
no answer to centre on, so it gets the sentences around the one sharing the most words with the
question (focus_span); eval_qa.py and sample.py --context cut their prompts that way.

Cloze pseudo-questions (cloze_examples) make many more reading examples out of plain passages:
one span of a sentence (a number, a name, else a longer word) is replaced by CLOZE_BLANK, the
sentence becomes the question and the span its answer.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from kazgpt.cli import UserError
from kazgpt.kazqad import clean_question, format_qa, nfc, passage_header, passage_key
from kazgpt.tokenizer import Tokenizer

ANSWER_RESERVE = 16  # tokens kept free after a reading prompt for the answer (training and answering alike)
CLOZE_BLANK = "___"
LOSS, START = 1, 2  # bits of a mask file: the token is an answer token / the first token of an example

# a sentence ends at . ! ? or … followed by space and anything but a lower-case letter or digit, or at a line end
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[^\s\da-zа-яәғқңөұүһіё])|\n\s*")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class QAExample:
    prompt: str  # ends with ':'
    answer: str  # ' <answer>\n'


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of text, which cover it without gaps."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return list(zip([0] + cuts, cuts + [len(text)]))


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def focus_span(context: str, question: str) -> tuple[int, int]:
    """The sentence of context that shares the most words with the question (the first on a tie)."""
    asked = words(question)
    return max(sentence_spans(context), key=lambda s: len(asked & words(context[s[0]:s[1]])))


def fit_passage(title: str, context: str, question: str, focus: tuple[int, int], tokenizer: Tokenizer,
                budget: int) -> Optional[str]:
    """The longest run of whole sentences of context around the focus span (the answer, or focus_span)
    whose reading prompt takes at most `budget` tokens; inside one over-long sentence, whole words
    around the span. None if not even the span fits."""
    def fits(a: int, b: int) -> bool:
        return len(tokenizer.encode(reading_prompt(title, context[a:b].strip(), question))) <= budget

    spans = sentence_spans(context)
    covering = [i for i, (a, b) in enumerate(spans) if a < focus[1] and b > focus[0]] or [0]
    lo, hi = covering[0], covering[-1]
    if not fits(spans[lo][0], spans[hi][1]):
        return _fit_words(context, focus, spans[lo][0], spans[hi][1], fits)
    grew = True
    while grew:  # add a sentence before, then one after, while they fit
        grew = False
        if lo > 0 and fits(spans[lo - 1][0], spans[hi][1]):
            lo, grew = lo - 1, True
        if hi < len(spans) - 1 and fits(spans[lo][0], spans[hi + 1][1]):
            hi, grew = hi + 1, True
    return context[spans[lo][0]:spans[hi][1]].strip()


def _fit_words(context: str, focus: tuple[int, int], a: int, b: int, fits) -> Optional[str]:
    """Whole words of context[a:b] around focus: the word farther from it goes first, until it fits."""
    spans = [(a + m.start(), a + m.end()) for m in re.finditer(r"\S+", context[a:b])]
    i, j = 0, len(spans) - 1
    while not fits(spans[i][0], spans[j][1]):
        before = focus[0] - spans[i][1] if spans[i][1] <= focus[0] else -1  # -1: the word overlaps the focus
        after = spans[j][0] - focus[1] if spans[j][0] >= focus[1] else -1
        if before < 0 and after < 0:
            return None  # only the focus is left and it does not fit
        if before > after:
            i += 1
        else:
            j -= 1
    return context[spans[i][0]:spans[j][1]]


def reading_prompt(title: str, passage: str, question: str) -> str:
    return passage_header(title, passage) + format_qa(question)


def answer_text(answer: str) -> str:
    return " " + answer + "\n"


def reading_example(title: str, context: str, question: str, answer: str, answer_start: int,
                    tokenizer: Tokenizer, block_size: int) -> Optional[QAExample]:
    """A reading example whose passage is cut to fit block_size around the answer span; None if the
    span is not where answer_start says or cannot fit."""
    if answer_start < 0 or context[answer_start:answer_start + len(answer)] != answer:
        answer_start = context.find(answer)
        if answer_start < 0:
            return None
    budget = block_size - max(ANSWER_RESERVE, len(tokenizer.encode(answer_text(answer))))
    passage = fit_passage(title, context, question, (answer_start, answer_start + len(answer)), tokenizer, budget)
    return None if passage is None else QAExample(reading_prompt(title, passage, question), answer_text(answer))


def question_prompt(question: str, tokenizer: Tokenizer, block_size: int, title: str = "",
                    context: Optional[str] = None) -> str:
    """The prompt that asks a question in the training layout: closed-book without a context, else a
    reading prompt whose passage is cut around the sentence sharing the most words with the question
    so that ANSWER_RESERVE tokens stay free for the answer. UserError if not even that fits."""
    if not context:
        return format_qa(question)
    sentence, budget = focus_span(context, question), block_size - ANSWER_RESERVE
    passage = fit_passage(title, context, question, sentence, tokenizer, budget)
    if passage is None:  # the sentence alone is too long: the words around its middle
        middle = (sentence[0] + sentence[1]) // 2
        passage = fit_passage(title, context, question, (middle, middle), tokenizer, budget)
    if passage is None:
        raise UserError(f"the model's context of {block_size} tokens cannot hold this question with any of the "
                        "passage and room for an answer: ask a shorter question, or use a model with a larger "
                        "block_size")
    return reading_prompt(title, passage, question)


def first_answer(row: dict) -> tuple[str, int]:
    """A KazQAD row's first answer, stripped, and where it starts in the stripped passage that
    passage_key gives ('' and -1 where there is none; the start is -1 where the row gives none)."""
    answers, starts = row["answers"]["text"], row["answers"].get("answer_start") or [-1]
    if not answers or not nfc(answers[0]).strip():
        return "", -1
    raw, answer = nfc(row["context"]), nfc(answers[0])
    if int(starts[0]) < 0:
        return answer.strip(), -1
    # answer_start counts from the unstripped passage, and some answers start with a space
    return answer.strip(), int(starts[0]) - (len(raw) - len(raw.lstrip())) + (len(answer) - len(answer.lstrip()))


def kazqad_examples(rows: Iterable[dict], tokenizer: Tokenizer, block_size: int) -> tuple[list[QAExample], int]:
    """A reading and a closed-book example per KazQAD row with an answer (its first one), and the
    number of reading examples that could not be made (answer not in the passage, or too long)."""
    examples, dropped = [], 0
    for row in rows:
        if not first_answer(row)[0]:
            continue
        title, context = passage_key(row)
        question, (answer, start) = clean_question(row["question"]), first_answer(row)
        reading = reading_example(title, context, question, answer, start, tokenizer, block_size)
        dropped += reading is None
        examples += [e for e in (reading, QAExample(format_qa(question), answer_text(answer))) if e is not None]
    return examples, dropped


CLOZE_KINDS = ("number", "name", "word")  # in the order cloze_span prefers them


def cloze_kind(word: re.Match) -> Optional[str]:
    """What a word of a sentence is, as a cloze answer: a number, a capitalized word that does not
    start the sentence (a name), a word of 5 letters or more, or None."""
    text = word.group()
    if text[0].isdigit():
        return "number"
    if word.start() > 0 and text[0].isupper():
        return "name"
    return "word" if len(text) >= 5 else None


def cloze_span(sentence: str, rng: random.Random) -> Optional[tuple[int, int, str]]:
    """The span of a sentence to blank out and its kind, preferring numbers, then names, then longer
    words (cloze_kind); None for sentences under 5 words."""
    words = list(re.finditer(r"\w[\w-]*", sentence))
    if len(words) < 5:
        return None
    for kind in CLOZE_KINDS:
        candidates = [w for w in words if cloze_kind(w) == kind]
        if candidates:
            chosen = rng.choice(candidates)
            return chosen.start(), chosen.end(), kind
    return None


def cloze_pools(passages: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The names and longer words of the passages, sorted: what a cloze answer is swapped for."""
    pools: dict[str, set[str]] = {"name": set(), "word": set()}
    for _, context in passages:
        for a, b in sentence_spans(context):
            for word in re.finditer(r"\w[\w-]*", context[a:b].strip()):
                kind = cloze_kind(word)
                if kind in pools:
                    pools[kind].add(word.group())
    return {kind: sorted(words) for kind, words in pools.items()}


def swap_for(answer: str, kind: str, pools: dict[str, list[str]], rng: random.Random) -> str:
    """Another span of the answer's kind: a number of as many digits, or a name or word of the pools."""
    if kind == "number":
        return "".join(str(rng.randint(1 if i == 0 and c != "0" else 0, 9)) if c.isdigit() else c
                       for i, c in enumerate(answer))
    choices = [w for w in pools[kind] if w != answer]
    return rng.choice(choices) if choices else answer


def cloze_examples(passages: Iterable[tuple[str, str]], per_passage: int, tokenizer: Tokenizer, block_size: int,
                   seed: int = 0) -> list[QAExample]:
    """Up to per_passage cloze reading examples from each (title, passage): distinct sentences, one
    blank each, the same for the same passages and seed. The blanked span is swapped, in the whole
    passage, title and question, for another of its kind (swap_for), so that a model that remembers
    the passage from pretraining still has to read the answer off the prompt."""
    passages = list(passages)
    pools, examples = cloze_pools(passages), []
    for title, context in passages:
        rng = random.Random(f"{seed}:{title}:{context}")
        spans = sentence_spans(context)
        for a, b in rng.sample(spans, len(spans))[:per_passage]:
            sentence = context[a:b].strip()
            span = cloze_span(sentence, rng)
            if span is None:
                continue
            start = a + (len(context[a:b]) - len(context[a:b].lstrip())) + span[0]
            answer = sentence[span[0]:span[1]]
            new = swap_for(answer, span[2], pools, rng)
            whole = re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)")
            new_start = start + len(whole.findall(context[:start])) * (len(new) - len(answer))
            question = sentence[:span[0]] + CLOZE_BLANK + sentence[span[1]:]
            question = " ".join(whole.sub(new, question).split()).rstrip(" .")
            example = reading_example(whole.sub(new, title), whole.sub(new, context), question, new, new_start,
                                      tokenizer, block_size)
            if example is not None:
                examples.append(example)
    return examples


def encode_examples(examples: list[QAExample], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the examples one after another (each ended by the end-of-text token where the
    tokenizer has one) and their mask: START on each example's first token, LOSS on answer tokens."""
    ids, mask = [], []
    for ex in examples:
        prompt, answer = tokenizer.encode(ex.prompt), tokenizer.encode(ex.answer)
        end = [tokenizer.eot_token] if tokenizer.eot_token is not None else []
        ids += prompt + answer + end
        mask += [START] + [0] * (len(prompt) - 1) + [LOSS] * len(answer) + [0] * len(end)
    return ids, mask
