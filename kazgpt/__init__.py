"""What the scripts share, one concern per module. The scripts at the top of the repo import these,
never each other. model.py, at the top beside them, is the base layer: it imports only
kazgpt.kernels, and every module here may import it.

    cli           the command-line edge: one-line errors (UserError, run_main), rank-0 printing
    files         reading text files; atomic writes, the one way files are written
    device        device and autocast dtype, peak FLOP/s for MFU, CPU memory tuning
    distributed   the processes of a run (torchrun DDP) and the signals that stop them
    kernels       the newer architecture's elementwise ops with hand-written backwards
    tokenizer     the char, GPT-2 BPE (tiktoken) and Kazakh BPE (tokenizers) tokenizers
    kazqad        reading a KazQAD source and laying it out as training text
    qa_examples   question-answering examples: reading prompts, cloze questions, loss masks
    corpus        large corpora (OpenWebText, Kazakh Wikipedia) streamed into token files
    dataset       prepared datasets: writing and checking them, training batches
    checkpoint    checkpoint files, and the models runs start from
    hf            this repo's GPT to and from transformers' GPT-2 and Persimmon classes
    optim         the optimizers (AdamW, Muon) and the learning-rate schedule
    engine        generation: sampling, the KV-cache loop, streamed text, extractive answers, span reading
    retrieval     BM25 passage retrieval for open-domain QA
    metrics       scoring answers: Kazakh-aware normalization, Exact Match and F1

Nothing here touches CUDA at import time.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
