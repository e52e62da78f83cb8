"""What the scripts share, one concern per module (the scripts at the top of the repo import these,
never each other):

    cli         one-line user errors, rank-0 printing, did-you-mean hints
    device      device and autocast dtype choice, peak FLOP/s for MFU, CPU memory tuning
    tokenizer   the char, GPT-2 BPE (tiktoken) and Kazakh BPE (tokenizers) tokenizers
    kazqad      reading a KazQAD source and laying it out as training text
    dataset     prepared datasets: writing and checking train.bin/val.bin/meta.json, batches
    checkpoint  atomic checkpoint files, and models loaded from them or from GPT-2 weights
    optim       the optimizers (AdamW, Muon) and the learning-rate schedule
    engine      streaming text out of a model: samples and answers that end with their line
    qa          scoring answers: Kazakh-aware normalization, Exact Match and F1

Nothing here touches CUDA at import time.
"""
