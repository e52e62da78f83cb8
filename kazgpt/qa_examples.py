"""Question-answering training examples: a prompt in the training layout, then the answer, with
the loss counted on the answer's tokens only.

    reading      '<question>\\n<title>\\n<passage>\\n<question>:' + ' <answer>\\n'
    closed_book  '<question>:'                                   + ' <answer>\\n'

A reading prompt asks its question first, so that a causal model reads the passage knowing what
is asked (a span head then points at the answer in it: SPAN_START/SPAN_END of kazgpt/dataset.py),
and again after it, where the answer is written. The three parts of a reading prompt are encoded
apart (encode_prompt), so that the passage's tokens are the same wherever it is asked.

A reading example's passage is cut to fit the context (fit_passage): whole sentences around the
one that holds the answer, so the answer span is never cut. A model answering a new question has
no answer to centre on, so it gets the sentences around the one sharing the most words with the
question (focus_span); eval_qa.py and sample.py --context cut their prompts that way. The passage
tokens of words the question shares are marked for the reader (question_matches), in training and
in answering alike.

Cloze pseudo-questions (cloze_examples) make many more reading examples out of plain passages:
one span of a sentence (a number, a name, else a longer word) is replaced by a Kazakh question
word in the span's case (Kazakh asks in place: 'Абай 1845 жылы туған' -> 'Абай қай жылы туған?'),
the sentence becomes the question and the span its answer.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from kazgpt.cli import UserError
from kazgpt.dataset import LOSS, MATCH, SPAN_END, SPAN_START, START
from kazgpt.engine import word_starts
from kazgpt.kazqad import clean_question, format_qa, nfc, passage_header, passage_key
from kazgpt.tokenizer import Tokenizer

ANSWER_RESERVE = 16  # tokens kept free after a reading prompt for the answer (training and answering alike)

# a sentence ends at . ! ? or … followed by space and anything but a lower-case letter or digit, or at a line end
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[^\s\da-zа-яәғқңөұүһіё])|\n\s*")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class QAExample:
    prompt: str  # ends with ':'
    answer: str  # ' <answer>\n'
    answer_at: int = -1  # where the answer starts in the prompt's passage (reading examples)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of text, which cover it without gaps."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return list(zip([0] + cuts, cuts + [len(text)]))


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


MATCH_STEM = 4  # letters of a word compared with the question's: Kazakh adds endings to a stem (жыл, жылы, жылдан)


def stems(text: str) -> set[str]:
    return {w[:MATCH_STEM] for w in words(text)}


# A question asks for a number unless it has a word that asks for something else (who, what, which,
# where, how) and no word of quantity or time: of KazQAD's training questions, 396 of 690 ask for no
# number so, and none of those has a numeric answer.
_ASKS_FOR_OTHER = {"кім", "кімнің", "кімді", "кімге", "кімдер", "не", "нені", "неге", "нелер", "неден", "немен",
                   "несі", "қандай", "қай", "қайда", "қайдан", "қалай"}
_QUANTITY_OR_TIME = ("қанша", "неше", "нешінші", "қашан", "жыл", "ғасыр", "уақыт", "мерзім", "кез", "дата",
                     "жасында", "күні", "айы", "саны", "шама", "пайыз", "температура", "биіктіг", "ұзындығ",
                     "тереңдіг", "қашықтығ", "ауданы", "көлем", "халқы", "мөлшер")


def asks_for_number(question: str) -> bool:
    """Whether the answer to a Kazakh question may be a number (see above): a reader's answer to one
    that asks for none does not start with a digit."""
    asked = [w.lower() for w in _WORD.findall(question)]
    return not set(asked) & _ASKS_FOR_OTHER or any(w.startswith(_QUANTITY_OR_TIME) for w in asked)


def question_matches(tokenizer: Tokenizer, ids: list[int], passage: Optional[tuple[int, int]]) -> list[bool]:
    """For a reading prompt's tokens (encode_prompt: the question line, then the title and passage
    at ids[a:b]), whether each token belongs to a word of the title or passage that starts as a word
    of the question does (its first MATCH_STEM letters): a reader's exact-match feature (DrQA),
    which a small model would learn slowly by attention from about a thousand questions. All False
    for a closed-book prompt (passage None)."""
    matched = [False] * len(ids)
    if passage is None:
        return matched
    a, b = passage
    asked = stems(tokenizer.decode(ids[:a]))
    pieces = [tokenizer.decode([t]) for t in ids[a:b]]
    starts = [k for k, start in enumerate(word_starts(pieces)) if start] + [len(pieces)]
    for k, end in zip(starts, starts[1:]):  # each word: tokens k..end-1
        if stems("".join(pieces[k:end])) & asked:
            matched[a + k:a + end] = [True] * (end - k)
    return matched


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
    return f"{question}\n" + passage_header(title, passage) + format_qa(question)


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> tuple[list[int], Optional[tuple[int, int]]]:
    """The prompt's tokens, a reading prompt's three parts (question line, title and passage, question
    line) encoded apart, and where the title and passage lie among them (None for a closed-book one)."""
    if "\n" not in prompt:
        return tokenizer.encode(prompt), None
    a, b = prompt.index("\n") + 1, prompt.rindex("\n") + 1
    first, passage = tokenizer.encode(prompt[:a]), tokenizer.encode(prompt[a:b])
    return first + passage + tokenizer.encode(prompt[b:]), (len(first), len(first) + len(passage))


def token_span(tokenizer: Tokenizer, ids: list[int], start: int, end: int) -> Optional[tuple[int, int]]:
    """The first and last of the tokens ids (a text's encoding) that hold characters start..end-1 of
    the text, found by decoding ever longer prefixes; None where the text has no such characters.
    A byte-level token may hold part of a character: the first token holds any of the first
    character's bytes, the last one completes the last character."""
    prefixes = [tokenizer.decode(ids[:k + 1]) for k in range(len(ids))]  # a partial character decodes as U+FFFD
    first = next((k for k, text in enumerate(prefixes) if len(text) > start), None)
    last = next((k for k, text in enumerate(prefixes) if len(text.rstrip("\ufffd")) >= end), None)
    return None if first is None or last is None else (first, last)


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
    if passage is None:
        return None
    passage_start = context.rfind(passage, 0, answer_start + len(passage))  # the stretch that holds the answer
    at = answer_start - passage_start + (len(title) + 1 if title else 0)  # in the title-and-passage part
    return QAExample(reading_prompt(title, passage, question), answer_text(answer), at)


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


def cloze_spans(sentence: str, count: int, rng: random.Random) -> list[tuple[int, int, str]]:
    """Up to count spans of distinct words of a sentence to ask about, with their kinds, preferring
    numbers, then names, then longer words (cloze_kind); none for sentences under 5 words. A name
    runs on over the capitalized words after it (Ахмет Байтұрсынов), a number over the short unit
    words after it (510 млн км), up to MAX_SPAN_WORDS, and a word over the next lower-case word in
    a share WORD_PAIRS of spans (мұрын қуысы), as KazQAD's answers do (2.05 words on average)."""
    words = list(re.finditer(r"\w[\w-]*", sentence))
    if len(words) < 5:
        return []
    chosen = []
    for kind in CLOZE_KINDS:
        candidates = [i for i, w in enumerate(words) if cloze_kind(w) == kind]
        for i in rng.sample(candidates, len(candidates)):
            j, longest = i + 1, MAX_SPAN_WORDS if kind != "word" else 1 + (rng.random() < WORD_PAIRS)
            while j < min(len(words), i + longest) and _runs_on(words[j], kind) and \
                    sentence[words[j - 1].end():words[j].start()] == " ":
                j += 1
            chosen.append((words[i].start(), words[j - 1].end(), kind))
    return chosen[:count]


MAX_SPAN_WORDS = 3
WORD_PAIRS = 1 / 3


def _runs_on(word: re.Match, kind: str) -> bool:
    """Whether a word after a cloze answer belongs to it: a capitalized word after a name, a short
    lower-case unit after a number."""
    text = word.group()
    if kind == "name":
        return text[0].isupper()
    return text.islower() and (len(text) <= 3 if kind == "number" else len(text) >= 3)


# the question word that asks for a span, by the span's case ending (checked longest first): a number
# is asked with қанша, or қай before a noun of time; a name with кім or не; another word with не
_CASES = (("ның", "нің", "дың", "дің", "тың", "тің"), ("нан", "нен", "дан", "ден", "тан", "тен"),
          ("ға", "ге", "қа", "ке", "на", "не"), ("ды", "ді", "ты", "ті", "ны", "ні"), ("да", "де", "та", "те"))
_ASKED_IN_CASE = {"кім": ("кімнің", "кімнен", "кімге", "кімді", "кімде"),
                  "не": ("ненің", "неден", "неге", "нені", "неде")}
_TIME_NOUNS = ("жыл", "ғасыр", "ай", "күн", "сағат")


def question_word(answer: str, kind: str, following: str, rng: random.Random) -> str:
    """A Kazakh question word to stand in place of the answer span, in the answer's case."""
    if kind == "number":
        return "қай" if following.lower().startswith(_TIME_NOUNS) else "қанша"
    base = rng.choice(("кім", "не")) if kind == "name" else "не"
    for endings, asked in zip(_CASES, _ASKED_IN_CASE[base]):
        if len(answer) > 4 and answer.lower().endswith(endings):
            return asked
    return base


QUESTION_WORD_DROP = 0.2  # the share of a cloze question's other words left out


def cloze_question(sentence: str, span: tuple[int, int, str], rng: random.Random) -> str:
    """The sentence with the span replaced by its question word, ending in '?', and a share
    QUESTION_WORD_DROP of its other words left out: a real question shares only some words with
    the sentence that answers it, so the model must not rely on matching it word for word."""
    a, b, kind = span
    asked = question_word(sentence[a:b], kind, sentence[b:].strip(), rng)
    before, after = sentence[:a].split(), sentence[b:].split()
    kept = [w for w in before if rng.random() >= QUESTION_WORD_DROP] + [asked] + \
        [w for w in after if rng.random() >= QUESTION_WORD_DROP]
    return " ".join(kept).rstrip(" .!…") + "?"


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
    """Another span of the answer's kind, word by word: digits redrawn (as many, no leading zero),
    a name or word of the pools for each name or word (a unit after a number is kept)."""
    def swap_word(word: str) -> str:
        if any(c.isdigit() for c in word):
            return "".join(str(rng.randint(1 if i == 0 and c != "0" else 0, 9)) if c.isdigit() else c
                           for i, c in enumerate(word))
        if kind == "number":
            return word
        choices = [w for w in pools[kind] if w != word]
        return rng.choice(choices) if choices else word

    return " ".join(swap_word(w) for w in answer.split(" "))


SPANS_PER_SENTENCE = 2  # cloze questions asked of one sentence, on distinct words


def cloze_examples(passages: Iterable[tuple[str, str]], per_passage: int, tokenizer: Tokenizer, block_size: int,
                   seed: int = 0) -> list[QAExample]:
    """Up to per_passage cloze reading examples from each (title, passage): up to SPANS_PER_SENTENCE
    per sentence, the same for the same passages and seed. The asked span is swapped, in the whole
    passage, title and question, for another of its kind (swap_for), so that a model that remembers
    the passage from pretraining still has to read the answer off the prompt."""
    passages = list(passages)
    pools, examples = cloze_pools(passages), []
    for title, context in passages:
        rng, made = random.Random(f"{seed}:{title}:{context}"), 0
        spans = sentence_spans(context)
        for a, b in rng.sample(spans, len(spans)):
            sentence = context[a:b].strip()
            start = a + len(context[a:b]) - len(context[a:b].lstrip())
            for span in cloze_spans(sentence, min(SPANS_PER_SENTENCE, per_passage - made), rng):
                example = _cloze_example(title, context, sentence, start, span, pools, tokenizer, block_size, rng)
                if example is not None:
                    examples.append(example)
                    made += 1
    return examples


def _cloze_example(title: str, context: str, sentence: str, sentence_start: int, span: tuple[int, int, str],
                   pools: dict[str, list[str]], tokenizer: Tokenizer, block_size: int,
                   rng: random.Random) -> Optional[QAExample]:
    """The reading example asking for one span of a sentence of context, swapped (cloze_examples)."""
    answer = sentence[span[0]:span[1]]
    new = swap_for(answer, span[2], pools, rng)
    whole = re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)")
    start = sentence_start + span[0]
    new_start = start + len(whole.findall(context[:start])) * (len(new) - len(answer))
    question = whole.sub(new, cloze_question(sentence, span, rng))
    return reading_example(whole.sub(new, title), whole.sub(new, context), question, new, new_start,
                           tokenizer, block_size)


def encode_examples(examples: list[QAExample], tokenizer: Tokenizer,
                    question_loss: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of the examples one after another (each ended by the end-of-text token where the
    tokenizer has one) and their mask: START on each example's first token, LOSS on answer tokens,
    and with question_loss on the tokens of the last question line too (a reading example's
    question repeats words of its passage, so predicting them trains the copying an answer needs);
    SPAN_START and SPAN_END on the passage tokens where a reading example's answer starts and ends,
    MATCH on its question_matches."""
    ids, mask = [], []
    for ex in examples:
        prompt, passage = encode_prompt(tokenizer, ex.prompt)
        answer = tokenizer.encode(ex.answer)
        end = [tokenizer.eot_token] if tokenizer.eot_token is not None else []
        ids += prompt + answer + end
        asked = passage[1] if passage else 0  # where the last question line starts
        marks = [0] * asked + [LOSS if question_loss else 0] * (len(prompt) - asked) + [LOSS] * len(answer)
        marks = [m | MATCH if matched else m for m, matched in
                 zip(marks, question_matches(tokenizer, prompt, passage) + [False] * len(answer))]
        if passage and ex.answer_at >= 0:
            a, b = passage
            cut = ex.prompt.index("\n") + 1
            found = token_span(tokenizer, prompt[a:b], ex.answer_at, ex.answer_at + len(ex.answer.strip()))
            if found is not None and ex.prompt[cut:].startswith(ex.answer.strip(), ex.answer_at):
                marks[a + found[0]] |= SPAN_START
                marks[a + found[1]] |= SPAN_END
        mask += [START] + marks[1:] + [0] * len(end)  # the first token follows another example: never counted
    return ids, mask
